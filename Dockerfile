# syntax=docker/dockerfile:1
# One image for both `sluice operator` and the `sluice proxy` sidecar the operator injects.
# The TypeScript sources run directly under Node 24's type stripping, so there is no build step;
# Node refuses to strip types under node_modules, which is why the sources live in /app itself.
ARG NODE_IMAGE=node:24-bookworm-slim

FROM ${NODE_IMAGE} AS deps
WORKDIR /app
COPY package.json package-lock.json ./
# Production dependencies only, exactly as locked; nothing needs an install script at run time.
RUN npm ci --omit=dev --ignore-scripts --no-audit --no-fund && npm cache clean --force

FROM ${NODE_IMAGE}
# tini as PID 1: forwards SIGTERM to Node (which then drains streams) and reaps zombies.
RUN apt-get update \
  && apt-get install -y --no-install-recommends tini \
  && rm -rf /var/lib/apt/lists/*
ENV NODE_ENV=production
WORKDIR /app
COPY --from=deps /app/node_modules ./node_modules
COPY package.json ./
COPY activator ./activator
COPY api ./api
COPY bin ./bin
COPY cli ./cli
COPY client ./client
COPY common ./common
COPY operator ./operator
COPY proxy ./proxy
# The base image's unprivileged `node` user, by number so that runAsNonRoot can verify it.
USER 1000:1000
# proxy public and admin ports; operator admin port.
EXPOSE 8080 9090 8081
ENTRYPOINT ["tini", "--", "node", "bin/sluice.js"]
CMD ["--help"]
