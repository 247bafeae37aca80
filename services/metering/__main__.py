from services.common.server import serve
from services.metering.app import build_server
from services.metering.settings import MeteringSettings

if __name__ == "__main__":
    serve(build_server, MeteringSettings(), "metering")
