/* npstream's native read loop: many positional reads of one file in one call, without the GIL.
 *
 * Compiled on first use by npstream/_native/__init__.py (cc -O2 -shared -fPIC) and called through
 * ctypes, which releases the GIL for the call. Why native: one read per row from Python costs
 * 2-4 us of interpreter work around a ~1 us system call, and the interpreter work is serialised
 * by the GIL, so scattered small rows (global shuffle) ran at a fraction of what the kernel can
 * serve. The pure-Python version of this loop (npstream/_storage/preads.py) is the fallback and
 * must stay equivalent.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <sys/uio.h>
#include <unistd.h>

#define NPSTREAM_IOV 1024 /* IOV_MAX on Linux */

/* Read ranges [off[i], off[i] + len[i]) of fd into base + dst[i], for i in [0, n).
 *
 * Ranges are sorted by offset and do not overlap. Consecutive ranges at most max_gap bytes
 * apart are read by one preadv: the ranges into their destinations, the gaps into trash (which
 * holds at least max_gap bytes). Returns 0 when every byte was read. Otherwise returns -1 and
 * stores in *failed the file offset where reading stopped and in *error the errno (0: the file
 * ended there).
 */
long npstream_read_many(int fd, long n, const int64_t *off, const int64_t *len, char *base,
                        const int64_t *dst, int64_t max_gap, char *trash, int64_t *failed,
                        int *error)
{
    struct iovec iov[NPSTREAM_IOV];
    long i = 0;
    while (i < n) {
        int k = 0;
        long j = i;
        int64_t start = off[i], end = off[i];
        while (j < n && k + 2 <= NPSTREAM_IOV) {
            if (j > i) {
                int64_t gap = off[j] - end;
                if (gap > max_gap || gap < 0)
                    break;
                if (gap > 0) {
                    iov[k].iov_base = trash;
                    iov[k].iov_len = (size_t)gap;
                    k++;
                }
            }
            iov[k].iov_base = base + dst[j];
            iov[k].iov_len = (size_t)len[j];
            k++;
            end = off[j] + len[j];
            j++;
        }
        int64_t want = end - start, done = 0;
        int first = 0;
        while (done < want) {
            ssize_t got = preadv(fd, iov + first, k - first, start + done);
            if (got < 0 && errno == EINTR)
                continue;
            if (got <= 0) {
                *failed = start + done;
                *error = got < 0 ? errno : 0;
                return -1;
            }
            done += got;
            while (first < k && (size_t)got >= iov[first].iov_len) {
                got -= (ssize_t)iov[first].iov_len;
                first++;
            }
            if (first < k && got > 0) {
                iov[first].iov_base = (char *)iov[first].iov_base + got;
                iov[first].iov_len -= (size_t)got;
            }
        }
        i = j;
    }
    return 0;
}
