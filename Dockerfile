# fedsentinel service image (also runs the simulator for the compose demo).
#   docker build -t fedsentinel .
#   docker run -p 8080:8080 -v fedsentinel-data:/data fedsentinel
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY monitor ./monitor
COPY collectors ./collectors
COPY simulator ./simulator
COPY bench ./bench
# pyproject pins torch==2.13.0; from PyPI that is the CUDA build (several GB). The CPU index
# serves 2.13.0+cpu, which satisfies the same pin and is preferred over the PyPI wheel.
RUN pip install --extra-index-url https://download.pytorch.org/whl/cpu . \
    && python -c "import torch; assert not torch.version.cuda, torch.version.cuda"

RUN useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin fedsentinel \
    && mkdir -p /data && chown fedsentinel /data
USER fedsentinel
WORKDIR /data

ENV FEDSENTINEL_HOST=0.0.0.0 \
    FEDSENTINEL_PORT=8080 \
    FEDSENTINEL_DATA_DIR=/data
VOLUME /data
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/readyz', timeout=2)"]
CMD ["fedsentinel", "serve"]
