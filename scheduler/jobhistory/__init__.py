"""The parts of the job store; its public face is ``scheduler/jobstore.py``."""
