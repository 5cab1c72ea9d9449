# Loaded by twistd's plugin scan: keep it to a name and a module path.
from twisted.application.service import ServiceMaker

scheduler = ServiceMaker(
    "job scheduler",
    "scheduler.tap",
    "Distributed job scheduler: TCP commands, REST API, dashboard, cron.",
    "scheduler",
)
