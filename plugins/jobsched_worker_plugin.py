# Loaded by twistd's plugin scan: keep it to a name and a module path.
from twisted.application.service import ServiceMaker

worker = ServiceMaker(
    "job scheduler worker",
    "worker.tap",
    "Worker agent: dials out to the scheduler and runs its jobs.",
    "worker",
)
