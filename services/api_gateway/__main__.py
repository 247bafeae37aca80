from services.api_gateway.app import build_server
from services.api_gateway.settings import GatewaySettings
from services.common.server import serve

if __name__ == "__main__":
    serve(build_server, GatewaySettings(), "gateway")
