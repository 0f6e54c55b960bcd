/*
 * tcpinfo.c: what the kernel knows of a stream's bytes (TCP_INFO), for the stall
 * watch (src/streams/stall.ts).  A file of its own: glibc's <netinet/tcp.h>, which
 * net.c needs, has an older struct tcp_info without these counters.
 */
#include "internal.h"

#include <errno.h>
#include <linux/tcp.h>
#include <netinet/in.h>
#include <sys/socket.h>

ESCP_API int escp_tcp_bytes(int fd, uint64_t out[2]) {
  struct tcp_info ti;
  socklen_t len = sizeof ti;
  if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) != 0) return -errno;
  /* Older kernels (< 4.1) fill less: then both read as 0 and nothing is ever owed. */
  int full = len >= offsetof(struct tcp_info, tcpi_bytes_received) + sizeof ti.tcpi_bytes_received;
  out[0] = full ? ti.tcpi_bytes_acked : 0;
  out[1] = full ? ti.tcpi_bytes_received : 0;
  return 0;
}
