# The dashboard's image: the pipeline (producers, store writers, topic admin, embedded broker)
# and the Dash app. docker-compose.yml runs it twice, with different commands.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin app

WORKDIR /app

# Dependencies first, so code changes reuse this layer.
COPY requirements.txt .
RUN pip install -r requirements.txt

COPY pipeline/ pipeline/
COPY dash_app/ dash_app/
COPY assets/ assets/

# RUN_DIR (default "data"): the embedded broker's pidfile and the default SQLite database.
RUN mkdir data && chown app:app data

USER app

# Inside a container the dashboard must listen on every interface to be reachable through a
# published port; publish it on 127.0.0.1 on the host (docker run -p 127.0.0.1:8050:8050).
ENV DASH_HOST=0.0.0.0
EXPOSE 8050

# Without KAFKA_BOOTSTRAP_SERVERS and STORE_URL this is the self-contained default: the embedded
# broker and SQLite. docker-compose.yml overrides the command and points it at Kafka and QuestDB.
CMD ["python", "-m", "pipeline.run", "all"]
