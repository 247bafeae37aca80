from services.common.server import serve
from services.scheduler.app import build_server
from services.scheduler.settings import SchedulerSettings

if __name__ == "__main__":
    serve(build_server, SchedulerSettings(), "scheduler")
