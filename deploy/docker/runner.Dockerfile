# The learner-side runner that the kubernetes backend starts in every run's pod:
#   python -m dlaas.runner /etc/dlaas/runner.json
# FRAMEWORK_PACKAGES adds a framework: the scheduler's DLAAS_SCHEDULER_KUBERNETES_IMAGES maps
# "framework:version" to the image built with it, for example
#   docker build -f deploy/docker/runner.Dockerfile -t dlaas/runner:dev .
#   docker build -f deploy/docker/runner.Dockerfile --build-arg FRAMEWORK_PACKAGES="torch==2.13.0" \
#     -t dlaas/runner-pytorch:dev .
FROM python:3.11-slim AS build
RUN pip install --no-cache-dir grpcio-tools==1.85.1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY protos protos
COPY third_party third_party
COPY dlaas dlaas
COPY services services
RUN python -m grpc_tools.protoc -Iprotos -Ithird_party/protos --python_out=. --grpc_python_out=. $(find protos -name '*.proto') \
 && for p in types gateway scheduler storage metering; do touch dlaas/$p/__init__.py dlaas/$p/v1/__init__.py; done \
 && pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim
ARG FRAMEWORK_PACKAGES=""
COPY --from=build /install /usr/local
RUN if [ -n "$FRAMEWORK_PACKAGES" ]; then pip install --no-cache-dir $FRAMEWORK_PACKAGES; fi \
 && useradd --uid 1000 --user-group --create-home dlaas
# Runs as 1000 (the pod's runAsUser), with a read-only root: the job directory and /tmp are emptyDirs.
USER 1000:1000
ENV PYTHONUNBUFFERED=1
ENTRYPOINT ["python", "-m", "dlaas.runner"]
