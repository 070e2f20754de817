"""The aws provider (EC2): ``OUTGROW_PROVIDER=aws``, installed with ``outgrow[aws]``.

Only :mod:`outgrow.transfer.boto` imports boto3, and lazily: importing this
package works without it. See ``docs/aws.md``.
"""
