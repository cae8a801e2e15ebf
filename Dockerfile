# The skiff image: one statically linked binary on an empty base, run as a non-root user.
#
# Build it with `scripts/image`, which first builds the static binary on the host
# (`cargo build --release --target x86_64-unknown-linux-musl`) and puts it in the build
# context beside a tiny root file system (/etc/passwd with the user skiff, and /tmp).
# No registry image is needed, so it builds where none can be pulled.
#
#   docker run --rm skiff --version
#   docker run --rm --network host --user "$(id -u):$(id -g)" \
#     --group-add "$(stat -c %g /var/run/docker.sock)" \
#     -v /var/run/docker.sock:/var/run/docker.sock -v "$PWD/tasks:/tasks" \
#     skiff controller --dir /tasks --runtime docker --docker-network host --once
FROM scratch
COPY rootfs/ /
COPY skiff /usr/local/bin/skiff
ENV HOME=/tmp
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/skiff"]
CMD ["--help"]
