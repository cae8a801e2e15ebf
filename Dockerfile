# The busybox image skiff's Docker tests run, built with no registry: only Debian's
# busybox-static binary (which scripts/services.sh copies into the build context beside
# this file) and its applet links. Build it with `build_test_image` from
# scripts/services.sh, which tags it skiff-busybox:test.
FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
