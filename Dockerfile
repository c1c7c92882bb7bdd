# The image holds only the static exporter binary: build it first with
# `CGO_ENABLED=0 go build -o connection_exporter .` (scripts/image does both).
FROM scratch
COPY connection_exporter /bin/connection_exporter
EXPOSE 10074
ENTRYPOINT ["/bin/connection_exporter"]
