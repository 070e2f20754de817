"""Drives instances and agents: start a job on an instance, move it to another one."""
