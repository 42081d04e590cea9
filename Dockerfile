# One image for all four services; docker-compose.yml picks the service with its `command`
# (python -m jinshui.<service>). The `jinshui` command is installed too: `docker compose exec gateway jinshui token`.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY constraints.txt ./
RUN pip install -c constraints.txt hatchling

COPY proto ./proto
COPY libs ./libs
COPY services ./services
# Non-editable installs: the image needs no sources once the packages are in site-packages.
RUN pip install --no-build-isolation -c constraints.txt \
        ./proto \
        ./libs/kit \
        ./services/registry \
        ./services/incidents \
        ./services/risk \
        ./services/gateway \
        ./libs/cli \
    && rm -rf /src/proto /src/libs /src/services

# Named volumes take the owner of the image's directory on first use, so the non-root user can write there.
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/jinshui jinshui \
    && mkdir -p /data/jinshui \
    && chown jinshui:jinshui /data/jinshui
USER jinshui
WORKDIR /home/jinshui
ENV JINSHUI_HOME=/data/jinshui \
    HTTP_HOST=0.0.0.0 \
    HTTP_PORT=8000
EXPOSE 8000

CMD ["python", "-m", "jinshui.gateway"]
