/*
 * shed -- load shedding: the runtime's load signal (pressure), the controller that sheds
 * the lowest priorities first on it, and a step's recent median latency, below which a
 * call's remaining deadline is shed before the step starts.
 *
 * Layer: the guards' level, above clock; the calls and the workers use it.
 *
 * Pressure, in 0..1, is d / (d + RSL_SHED_HALF_NS), with d the worst worker's delay: the
 * larger of its loop's lag (a heartbeat timer every RSL_SHED_BEAT_NS, how late it fired)
 * and its queue's sojourn (the longest a call waited in the queue during the beat), each
 * an EWMA over beats (weight 1/4).  An idle loop is ~0.01; 20 ms of delay is 0.5.
 *
 * The controller keeps a shed level L in [0, priorities seen in the last second].  Each
 * beat, while pressure is above `above`, L rises by RSL_SHED_GAIN x (pressure - above) /
 * (1 - above); otherwise it falls by RSL_SHED_DECAY.  A call of priority p is shed with
 * probability clamp(L - rank(p), 0, 1), rank(p) being how many priorities below p were
 * seen: the lowest first, one whole priority before the next.  Priority 0 is shed at most
 * `max_shed` of the time (default 0: never).
 *
 * Threads: a worker's heartbeat and the calls starting on it write that worker's slot;
 * worker 0's heartbeat runs the controller; any thread reads.  Relaxed atomics: these are
 * estimates, and a lost update is one sample less.
 */
#ifndef RSL_SHED_H
#define RSL_SHED_H

#include <stdint.h>

#define RSL_SHED_BEAT_NS (50 * 1000000LL)
#define RSL_SHED_HALF_NS (20 * 1000000LL)
#define RSL_SHED_GAIN    0.25 /* priorities per beat at pressure 1 */
#define RSL_SHED_DECAY   0.05 /* priorities per beat: one a second */
/* Call priorities: 0 is the highest, RSL_PRIORITY_LOWEST the lowest; a call given none is
 * 0.  A policy gives them from its route or its `priority` (lua/resilua.lua). */
#define RSL_PRIORITY_LOWEST 7
#define RSL_PRIORITIES      (RSL_PRIORITY_LOWEST + 1)

/* A step's recent median latency, streamed frugally: each sample moves the estimate 1/32
 * of itself toward it (up if above, down if below), so it settles where half the samples
 * are above, within a few percent, and follows a change in ~100 samples. */
typedef struct rsl__median {
    _Atomic int64_t m_ns;
    _Atomic int64_t n;
} rsl__median;

#define RSL_MEDIAN_MIN_SAMPLES 20

void rsl__median_observe(rsl__median *m, int64_t ns);
/* The estimate; 0 until RSL_MEDIAN_MIN_SAMPLES samples. */
int64_t rsl__median_get(const rsl__median *m);

typedef struct rsl__load_conf {
    double above;    /* the controller sheds while pressure is above it; 0: off */
    double max_shed; /* the most of priority 0 it may shed, 0..1 */
} rsl__load_conf;

typedef struct rsl__load rsl__load;

/* NULL when out of memory.  Out-of-range settings are clamped (above to [0, 0.99]). */
rsl__load *rsl__load_new(int workers, const rsl__load_conf *c);
void rsl__load_free(rsl__load *l);
/* Worker w's heartbeat fired lag_ns late: its delay's next sample; worker 0's also moves
 * the controller one beat.  w's own thread. */
void rsl__load_beat(rsl__load *l, int w, int64_t lag_ns);
/* A call waited ns in worker w's queue before it started.  w's own thread. */
void rsl__load_sojourn(rsl__load *l, int w, int64_t ns);
double rsl__load_pressure(const rsl__load *l);
/* The shed level L (0: nothing is shed). */
double rsl__load_level(const rsl__load *l);
/* A call of priority p (0..7) starts: 1 when it is shed (and counted).  It draws from the
 * thread's random stream (clock.h) only while something is being shed. */
int rsl__load_shed(rsl__load *l, int p);
/* A call was shed because its deadline was below the step's median (counted here). */
void rsl__load_note_deadline_shed(rsl__load *l);
uint64_t rsl__load_shed_count(const rsl__load *l, int p);
uint64_t rsl__load_deadline_sheds(const rsl__load *l);

#endif
