# The operator's image: `breaker run`, as the Helm chart starts it, and `breaker node-agent`.
#
#   docker build -t breaker-operator:0.2.0 .
#
# Two stages: the first installs the package and its dependencies into a virtualenv, the
# second copies only that onto a fresh slim base (no pip cache, no build tools). The base
# is pinned to a patch release; pin it by digest in your own registry if you mirror it.
ARG BASE=python:3.12.8-slim-bookworm

FROM ${BASE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
RUN python -m venv /opt/breaker \
 && /opt/breaker/bin/pip install .

FROM ${BASE}
# The node agent (`breaker node-agent`, the chart's optional DaemonSet) cuts quarantined
# pods' connections with these: ss (iproute2), conntrack, iptables; nsenter is in the base.
RUN apt-get update \
 && apt-get install -y --no-install-recommends iproute2 conntrack iptables \
 && rm -rf /var/lib/apt/lists/*
LABEL org.opencontainers.image.title="breaker" \
      org.opencontainers.image.description="A circuit breaker for GPU training jobs run by autonomous agents" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /opt/breaker /opt/breaker
ENV PATH=/opt/breaker/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# The chart runs it read-only as this user; nothing is written outside /tmp.
USER 65532:65532
EXPOSE 8080 8081
ENTRYPOINT ["breaker"]
CMD ["run", "--liveness=http://0.0.0.0:8080/healthz", "--metrics-address=0.0.0.0"]
