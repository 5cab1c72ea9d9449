"""The parts of the job store; its public face is ``scheduler/job_store.py``."""
