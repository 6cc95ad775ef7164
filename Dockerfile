# kube-service-tunnel image, built from Debian packages only (see docs/kubernetes.md).
# (GoogleTest is only needed because the top-level CMakeLists includes the test helpers.)
#   docker build -t kube-service-tunnel:0.1.0 .
FROM debian:bookworm AS build
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      g++ cmake ninja-build pkg-config \
      libmnl-dev libnftables-dev libcurl4-openssl-dev libssl-dev libbpf-dev bpftool clang \
      nlohmann-json3-dev libyaml-dev libspdlog-dev libfmt-dev libcli11-dev libcpp-httplib-dev prometheus-cpp-dev \
      libgtest-dev libgmock-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY CMakeLists.txt ./
COPY cmake cmake
COPY src src
RUN cmake -S . -B /build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
      -DKST_BUILD_TESTS=OFF -DKST_BUILD_BENCH=OFF \
 && ninja -C /build kube-service-tunnel \
 && strip /build/src/kube-service-tunnel

FROM debian:bookworm-slim
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      libmnl0 libnftables1 libbpf1 libcurl4 libssl3 libyaml-0-2 libspdlog1.10 libfmt9 libcpp-httplib0.11 libprometheus-cpp-core1.0 \
      ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /build/src/kube-service-tunnel /usr/bin/kube-service-tunnel
ENTRYPOINT ["/usr/bin/kube-service-tunnel"]
CMD ["run"]
