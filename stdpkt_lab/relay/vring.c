/*
 * vring.c - split virtqueues in a guest's memory (virtio 1.x, section 2.7).
 *
 * Everything here reads memory the guest writes while we read it: indices and
 * descriptors are loaded once into locals, every address is translated with
 * its length against the memory table (never past a region), chains are at
 * most the queue size long, indirect tables are not nested.  A bad value makes
 * the chain (and so the frame) fail with a reason; it never makes us touch
 * memory outside the guest's.
 */
#define _GNU_SOURCE
#include "vhost.h"

#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static void *translate(const vu_mem *m, uint64_t addr, uint64_t len, int by_uva)
{
    for (uint32_t i = 0; i < m->n; i++) {
        const vu_region *r = &m->r[i];
        uint64_t base = by_uva ? r->uva : r->gpa;
        if (addr >= base && addr - base < r->size && len <= r->size - (addr - base))
            return r->host + (addr - base);
    }
    return NULL;
}

void *vu_gpa(const vu_mem *m, uint64_t addr, uint64_t len)
{
    return translate(m, addr, len, 0);
}

void *vu_uva(const vu_mem *m, uint64_t addr, uint64_t len)
{
    return translate(m, addr, len, 1);
}

/* Translates the ring addresses once the memory table and the addresses are known. */
int vq_map(vu_queue *q, const vu_mem *m)
{
    if (q->num == 0 || q->num > VU_QUEUE_MAX || (q->num & (q->num - 1)))
        return -EINVAL;
    q->desc = vu_uva(m, q->desc_addr, 16ull * q->num);
    q->avail = vu_uva(m, q->avail_addr, 4 + 2ull * q->num + 2);
    q->used_hdr = vu_uva(m, q->used_addr, 4 + 8ull * q->num + 2);
    if (!q->desc || !q->avail || !q->used_hdr) {
        q->desc = NULL;
        q->avail = q->used_hdr = NULL;
        q->used = NULL;
        return -EFAULT;
    }
    q->used = (struct vring_used_elem *)(q->used_hdr + 2);
    return 0;
}

static inline uint16_t avail_idx(const vu_queue *q)
{
    return __atomic_load_n(&q->avail[1], __ATOMIC_ACQUIRE);
}

int vq_avail(vu_queue *q)
{
    if (!q->avail || !q->enabled)
        return 0;
    uint16_t n = (uint16_t)(avail_idx(q) - q->last_avail);
    return n > q->num ? 0 : n;       /* a guest claiming more than the ring holds: nothing */
}

static int add_iov(vu_chain *c, const vu_mem *m, uint64_t addr, uint32_t len, const char **why)
{
    if (len == 0)
        return 0;
    if (c->niov >= VU_CHAIN_IOV) {
        *why = "descriptor chain has too many buffers";
        return -E2BIG;
    }
    void *p = vu_gpa(m, addr, len);
    if (!p) {
        *why = "descriptor points outside the guest's memory";
        return -EFAULT;
    }
    c->iov[c->niov].iov_base = p;
    c->iov[c->niov].iov_len = len;
    c->niov++;
    c->len += len;
    return 0;
}

/* Walks the chain starting at head into c (buffers of the wanted direction only). */
static int walk(vu_queue *q, const vu_mem *m, uint16_t head, int writable, vu_chain *c,
                const char **why)
{
    const struct vring_desc *table = q->desc;
    uint32_t size = q->num, i = head, steps = 0;
    int indirect = 0;
    c->head = head;
    c->niov = 0;
    c->len = 0;
    for (;;) {
        if (i >= size) {
            *why = "descriptor index out of range";
            return -EINVAL;
        }
        struct vring_desc d;
        memcpy(&d, &table[i], sizeof d);
        if (++steps > size) {
            *why = "descriptor chain loops";
            return -ELOOP;
        }
        if (d.flags & VRING_DESC_F_INDIRECT) {
            if (indirect || (d.flags & VRING_DESC_F_NEXT)) {
                *why = "bad indirect descriptor (nested, or chained)";
                return -EINVAL;
            }
            if (d.len == 0 || d.len % sizeof(struct vring_desc) || d.len / 16 > VU_QUEUE_MAX) {
                *why = "bad indirect table length";
                return -EINVAL;
            }
            table = vu_gpa(m, d.addr, d.len);
            if (!table) {
                *why = "indirect table outside the guest's memory";
                return -EFAULT;
            }
            size = d.len / sizeof(struct vring_desc);
            indirect = 1;
            i = 0;
            steps = 0;
            continue;
        }
        int w = !!(d.flags & VRING_DESC_F_WRITE);
        if (w != writable) {
            *why = writable ? "read-only buffer in a receive chain"
                            : "writable buffer in a transmit chain";
            return -EINVAL;
        }
        int rc = add_iov(c, m, d.addr, d.len, why);
        if (rc < 0)
            return rc;
        if (!(d.flags & VRING_DESC_F_NEXT))
            return 0;
        i = d.next;
    }
}

int vq_peek_at(vu_queue *q, const vu_mem *m, uint16_t k, int writable, vu_chain *c,
               const char **why)
{
    uint16_t slot = (uint16_t)(q->last_avail + k) & (uint16_t)(q->num - 1);
    uint16_t head = __atomic_load_n(&q->avail[2 + slot], __ATOMIC_RELAXED);
    return walk(q, m, head, writable, c, why);
}

int vq_pop(vu_queue *q, const vu_mem *m, int writable, vu_chain *c, const char **why)
{
    int rc = vq_peek_at(q, m, 0, writable, c, why);
    q->last_avail++;
    return rc;
}

void vq_push(vu_queue *q, uint16_t head, uint32_t len)
{
    struct vring_used_elem e = { head, len };
    memcpy(&q->used[q->used_idx & (q->num - 1)], &e, sizeof e);
    q->used_idx++;
    __atomic_store_n(&q->used_hdr[1], q->used_idx, __ATOMIC_RELEASE);
    q->pending_call = 1;
}

void vq_signal(vu_queue *q)
{
    if (!q->pending_call || q->call < 0)
        return;
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    uint16_t flags = __atomic_load_n(&q->avail[0], __ATOMIC_RELAXED);
    q->pending_call = 0;
    if (flags & VRING_AVAIL_F_NO_INTERRUPT)
        return;
    uint64_t one = 1;
    /* UML's call descriptor is a socket it reads 8 bytes at a time: a full one
     * already has an interrupt pending */
    ssize_t w = send(q->call, &one, sizeof one, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (w < 0 && errno == ENOTSOCK)
        w = write(q->call, &one, sizeof one);
    (void)w;
}

void vq_notify_off(vu_queue *q)
{
    if (q->used_hdr)
        __atomic_store_n(&q->used_hdr[0], VRING_USED_F_NO_NOTIFY, __ATOMIC_RELAXED);
}

int vq_notify_on(vu_queue *q)
{
    if (!q->used_hdr)
        return 0;
    __atomic_store_n(&q->used_hdr[0], 0, __ATOMIC_RELAXED);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);    /* the flag before the re-read of idx */
    return vq_avail(q) > 0;
}
