# The scheduler service: python -m services.scheduler (settings from DLAAS_* variables; see the README).
# Build from the repository root: docker build -f deploy/docker/scheduler.Dockerfile -t dlaas/scheduler:dev .
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
 && pip install --no-cache-dir --prefix=/install '.[kubernetes]'

FROM python:3.11-slim
COPY --from=build /install /usr/local
RUN useradd --uid 1000 --user-group --no-create-home dlaas
USER 1000:1000
ENV PYTHONUNBUFFERED=1 DLAAS_SCHEDULER_HOST=0.0.0.0 DLAAS_SCHEDULER_PORT=50052
EXPOSE 50052
ENTRYPOINT ["python", "-m", "services.scheduler"]
