# Mosquitto 2 with the Dynamic Security plugin, from Debian: the plugin path is the one
# central/broker.py writes into the generated configuration (x86_64).
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends mosquitto \
    && rm -rf /var/lib/apt/lists/*
# runs as the uid docker-compose.yml gives it (the provisioning volume's owner)
CMD ["mosquitto", "-c", "/var/lib/eiot-broker/mosquitto.conf"]
