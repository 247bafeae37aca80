# The metering service: python -m services.metering (settings from DLAAS_* variables; see the README).
# Build from the repository root: docker build -f deploy/docker/metering.Dockerfile -t dlaas/metering:dev .
FROM python:3.11-slim AS build
RUN pip install --no-cache-dir grpcio-tools==1.85.1 mypy-protobuf
WORKDIR /src
COPY pyproject.toml README.md ./
COPY protos protos
COPY third_party third_party
COPY dlaas dlaas
COPY services services
RUN python -m grpc_tools.protoc -Iprotos -Ithird_party/protos --python_out=. --grpc_python_out=. $(find protos -name '*.proto') \
 && for p in types gateway scheduler storage metering; do touch dlaas/$p/__init__.py dlaas/$p/v1/__init__.py; done \
 && pip install --no-cache-dir --prefix=/install '.'

FROM python:3.11-slim
COPY --from=build /install /usr/local
RUN useradd --uid 1000 --user-group --no-create-home dlaas
USER 1000:1000
ENV PYTHONUNBUFFERED=1 DLAAS_METERING_HOST=0.0.0.0 DLAAS_METERING_PORT=50054
EXPOSE 50054
ENTRYPOINT ["python", "-m", "services.metering"]
