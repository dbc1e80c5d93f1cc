# The Thaw image the manifests run (ghcr.io/thaw-dev/thaw): the controller and the model-cache
# agent. No vLLM and no torch: engines run the vLLM image rendered by `thaw knative render`
# (cluster.image in the policy file). No Envoy: the gateway runs the official Envoy image.
#
#   docker build -t ghcr.io/thaw-dev/thaw:0.1.0 .
#
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY kernel ./kernel
COPY autoscaler ./autoscaler
COPY engine ./engine
COPY activator ./activator
COPY model_cache ./model_cache
COPY events ./events
COPY policy_file ./policy_file
COPY local_stack ./local_stack
COPY knative ./knative
COPY sim ./sim
COPY thaw ./thaw
RUN pip install . && rm -rf /src

# Non-root, as the manifests' securityContext expects.
RUN useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin thaw
USER 10001
WORKDIR /
ENTRYPOINT ["thaw"]
CMD ["--help"]
