# whimbrel's container image: the CLI on a slim Python, run as a non-root user.
# Build:  docker build -t registry.example.com/whimbrel:0.1.0 .
# Bake migrations into an image of your own (see README, section Kubernetes):
#   FROM registry.example.com/whimbrel:0.1.0
#   COPY migrations/ /etc/whimbrel/migrations/

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src/ src/
# A wheel of whimbrel and of every dependency, so the final stage needs no build tools.
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
COPY --from=build /wheels /wheels
# The uid the Job's securityContext names (runAsUser: 10001, runAsNonRoot).
RUN pip install --no-cache-dir --no-index /wheels/*.whl \
    && rm -rf /wheels \
    && useradd --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin whimbrel \
    && mkdir -p /etc/whimbrel/migrations
USER 10001
WORKDIR /etc/whimbrel
ENTRYPOINT ["whimbrel"]
CMD ["--help"]
