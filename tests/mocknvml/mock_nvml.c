/*
 * greenwatch mock NVML: a fake libnvidia-ml.so.1 that the real pynvml loads.
 *
 * The library reads a scenario file (path in $GREENWATCH_MOCK_NVML_SCENARIO)
 * on every nvmlInit, nvmlInit_v2 and nvmlInitWithFlags call, and, when the scenario
 * says `reload_on_change 1`, again whenever the file is replaced while initialised.  The scenario is written by
 * tests/mocknvml/scenario.py; its format is documented in docs/mock-nvml.md.
 *
 * Everything is a pure function of the scenario and the real clock
 * (CLOCK_REALTIME).  Energy counters are exact analytic integrals of the
 * piecewise power profile.
 *
 * Struct layouts follow pynvml 13 (nvidia-ml-py 13.x) / nvml.h.
 */
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#define EXPORT __attribute__((visibility("default")))

/* ------------------------------------------------------------------ */
/* NVML types (subset)                                                 */
/* ------------------------------------------------------------------ */

typedef int nvmlReturn_t;

#define NVML_SUCCESS 0
#define NVML_ERROR_UNINITIALIZED 1
#define NVML_ERROR_INVALID_ARGUMENT 2
#define NVML_ERROR_NOT_SUPPORTED 3
#define NVML_ERROR_NO_PERMISSION 4
#define NVML_ERROR_ALREADY_INITIALIZED 5
#define NVML_ERROR_NOT_FOUND 6
#define NVML_ERROR_INSUFFICIENT_SIZE 7
#define NVML_ERROR_DRIVER_NOT_LOADED 9
#define NVML_ERROR_GPU_IS_LOST 15
#define NVML_ERROR_ARGUMENT_VERSION_MISMATCH 25
#define NVML_ERROR_UNKNOWN 999

#define NVML_VALUE_TYPE_DOUBLE 0
#define NVML_VALUE_TYPE_UNSIGNED_INT 1
#define NVML_VALUE_TYPE_UNSIGNED_LONG_LONG 3

#define NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION 83
#define NVML_FI_DEV_POWER_AVERAGE 185
#define NVML_FI_DEV_POWER_INSTANT 186
#define NVML_FI_DEV_POWER_CURRENT_LIMIT 187
#define NVML_FI_DEV_POWER_MIN_LIMIT 188
#define NVML_FI_DEV_POWER_MAX_LIMIT 189
#define NVML_FI_DEV_POWER_DEFAULT_LIMIT 190
#define NVML_FI_DEV_ENERGY 191

#define NVML_CLOCK_GRAPHICS 0
#define NVML_CLOCK_SM 1
#define NVML_CLOCK_MEM 2
#define NVML_CLOCK_VIDEO 3

#define NVML_TEMPERATURE_GPU 0

#define NVML_VALUE_NOT_AVAILABLE_UINT 0xFFFFFFFFu
#define NVML_VALUE_NOT_AVAILABLE_ULL 0xFFFFFFFFFFFFFFFFull

typedef struct {
    unsigned int gpu;
    unsigned int memory;
} nvmlUtilization_t;

typedef struct {
    unsigned long long total;
    unsigned long long free;
    unsigned long long used;
} nvmlMemory_t;

typedef struct {
    unsigned int version;
    unsigned long long total;
    unsigned long long reserved;
    unsigned long long free;
    unsigned long long used;
} nvmlMemory_v2_t;
#define nvmlMemory_v2 ((unsigned int)(sizeof(nvmlMemory_v2_t) | (2u << 24)))

typedef struct {
    unsigned int version;
    int sensorType;
    int temperature;
} nvmlTemperature_v1_t;
#define nvmlTemperature_v1 ((unsigned int)(sizeof(nvmlTemperature_v1_t) | (1u << 24)))

typedef struct {
    char busIdLegacy[16];
    unsigned int domain;
    unsigned int bus;
    unsigned int device;
    unsigned int pciDeviceId;
    unsigned int pciSubSystemId;
    char busId[32];
} nvmlPciInfo_t;

/* v1: pid + memory; v2 == v3 layout (pynvml: c_nvmlProcessInfo_v3_t = v2) */
typedef struct {
    unsigned int pid;
    unsigned long long usedGpuMemory;
} nvmlProcessInfo_v1_t;

typedef struct {
    unsigned int pid;
    unsigned long long usedGpuMemory;
    unsigned int gpuInstanceId;
    unsigned int computeInstanceId;
} nvmlProcessInfo_v2_t;

typedef struct {
    unsigned int pid;
    unsigned long long timeStamp;
    unsigned int smUtil;
    unsigned int memUtil;
    unsigned int encUtil;
    unsigned int decUtil;
} nvmlProcessUtilizationSample_t;

typedef union {
    double dVal;
    unsigned int uiVal;
    unsigned long ulVal;
    unsigned long long ullVal;
    signed long long sllVal;
    signed int siVal;
    unsigned short usVal;
} nvmlValue_t;

typedef struct {
    unsigned int fieldId;
    unsigned int scopeId;
    long long timestamp;
    long long latencyUsec;
    int valueType;
    nvmlReturn_t nvmlReturn;
    nvmlValue_t value;
} nvmlFieldValue_t;

_Static_assert(sizeof(nvmlFieldValue_t) == 40, "nvmlFieldValue_t layout");
_Static_assert(sizeof(nvmlProcessInfo_v2_t) == 24, "nvmlProcessInfo_v2_t layout");
_Static_assert(sizeof(nvmlProcessUtilizationSample_t) == 32, "sample layout");
_Static_assert(sizeof(nvmlMemory_v2_t) == 0x28, "nvmlMemory_v2_t layout");
_Static_assert(sizeof(nvmlTemperature_v1_t) == 0xC, "nvmlTemperature_v1_t layout");
_Static_assert(sizeof(nvmlPciInfo_t) == 68, "nvmlPciInfo_t layout");

/* ------------------------------------------------------------------ */
/* Scenario model                                                       */
/* ------------------------------------------------------------------ */

#define MAX_GPUS 64

enum { PIECE_CONST = 0, PIECE_SQUARE = 1, PIECE_RAMP = 2 };

typedef struct {
    int kind;
    double from, to;
    double a, b;  /* const: a=W; square: a=low b=high; ramp: a=W(from) b=W(to) */
    double period, duty, phase;
} piece_t;

typedef struct {
    double from, to;
    unsigned int gpu, mem;
} util_piece_t;

typedef struct mock_gpu {
    int present;
    unsigned int index;
    char name[96];
    char uuid[96];
    char serial[32];
    char bus_id[32];
    unsigned int minor;
    unsigned int arch;
    unsigned int pci_bus;
    unsigned int pci_device_id;
    unsigned int pci_subsys_id;
    unsigned long long mem_total;
    double power_limit_w;
    double default_w;
    int power_usage_average; /* GetPowerUsage: 0 instant, 1 trailing 1 s average */
    int energy_supported;
    double counter_offset_mj;
    double granularity_s;
    double driver_load_s;
    int proc_util_supported;
    int mig_mode;       /* MIG mode, current and pending */
    int gpm_supported;  /* GPU performance monitoring (Hopper and newer) */
    unsigned int mig_slots; /* nvmlDeviceGetMaxMigDeviceCount: compute slices of the board */
    int scope_gpu;          /* power/energy fields answer at GPU scope (scopeId 0) */
    int scope_module;       /* ... and at module scope (scopeId 1: GPU + Grace CPU + memory) */
    double module_extra_w;  /* what the module draws besides the GPU, constant */
    int frozen_timestamps;  /* field values all carry t0 as their timestamp (a broken driver) */
    double *resets;
    int n_resets;
    piece_t *pieces;
    int n_pieces;
    util_piece_t *util;
    int n_util;
} mock_gpu_t;

typedef mock_gpu_t *nvmlDevice_t;

typedef struct {
    unsigned int pid;
    unsigned int gpu;
    unsigned int sm, mem;
    unsigned long long used; /* NVML_VALUE_NOT_AVAILABLE_ULL = unavailable */
    double from, to;
    int gi, ci; /* MIG GPU / compute instance the process runs on; -1: none */
} proc_t;

/* One MIG device (GPU instance gi, compute instance ci) of board `gpu`, existing over [from, to):
 * several lines with other times describe a re-partitioning.  Handles point into S.migs. */
typedef struct mock_mig {
    unsigned int gpu, gi, ci, slices;
    char uuid[96];
    double from, to;
} mock_mig_t;
#define MAX_MIGS 256

typedef struct {
    int gpu; /* -1 = every GPU */
    char func[96];
    nvmlReturn_t code;
    double from, to;
} err_t;

typedef struct {
    long long t0_us;
    char driver_version[80];
    char nvml_version[80];
    int cuda_version;
    nvmlReturn_t init_error;
    int reload_on_change; /* re-read the file when it changes (see maybe_reload) */
    int n_gpus;
    mock_gpu_t gpus[MAX_GPUS];
    proc_t *procs;
    int n_procs;
    err_t *errs;
    int n_errs;
    mock_mig_t migs[MAX_MIGS];
    int n_migs;
} scenario_t;

static scenario_t S;       /* handles point into S.gpus, stable across reloads */
static int g_init_count;
static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;

/* The file S was loaded from and its identity then, for reload_on_change. */
static char g_path[4096];
static struct stat g_loaded_st;
static long long g_last_check_us;
static long long g_file_checks; /* how often maybe_reload compared the file (tests synchronise on it) */
#define RELOAD_CHECK_INTERVAL_US 20000LL

/* ------------------------------------------------------------------ */
/* Time and analytic power model                                        */
/* ------------------------------------------------------------------ */

static long long now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (long long)ts.tv_sec * 1000000LL + ts.tv_nsec / 1000;
}

static double rel_s(long long t_us) { return (double)(t_us - S.t0_us) / 1e6; }

/* Seconds spent "high" by a square piece between its phase origin and x. */
static double square_high_time(const piece_t *p, double x) {
    double u = (x - p->from - p->phase) / p->period;
    double k = floor(u);
    double r = u - k;
    return p->period * (k * p->duty + fmin(r, p->duty));
}

static double piece_value(const piece_t *p, double t) {
    switch (p->kind) {
    case PIECE_CONST:
        return p->a;
    case PIECE_SQUARE: {
        double u = ((t - p->from) - p->phase) / p->period;
        double r = u - floor(u);
        return r < p->duty ? p->b : p->a;
    }
    case PIECE_RAMP:
        if (p->to <= p->from) return p->a;
        return p->a + (p->b - p->a) * (t - p->from) / (p->to - p->from);
    }
    return 0.0;
}

/* Integral of piece p over [lo, hi] where from <= lo <= hi <= to. */
static double piece_integral(const piece_t *p, double lo, double hi) {
    switch (p->kind) {
    case PIECE_CONST:
        return p->a * (hi - lo);
    case PIECE_SQUARE:
        return p->a * (hi - lo) +
               (p->b - p->a) * (square_high_time(p, hi) - square_high_time(p, lo));
    case PIECE_RAMP:
        return 0.5 * (piece_value(p, lo) + piece_value(p, hi)) * (hi - lo);
    }
    return 0.0;
}

static double power_w(const mock_gpu_t *g, double t) {
    for (int i = 0; i < g->n_pieces; i++) {
        const piece_t *p = &g->pieces[i];
        if (t >= p->from && t < p->to) return piece_value(p, t);
    }
    return g->default_w;
}

/* Exact integral (J) of the power profile over [a, b] (relative seconds). */
static double energy_j(const mock_gpu_t *g, double a, double b) {
    if (b <= a) return 0.0;
    double total = 0.0, covered = 0.0;
    for (int i = 0; i < g->n_pieces; i++) {
        const piece_t *p = &g->pieces[i];
        double lo = a > p->from ? a : p->from;
        double hi = b < p->to ? b : p->to;
        if (hi > lo) {
            total += piece_integral(p, lo, hi);
            covered += hi - lo;
        }
    }
    return total + g->default_w * ((b - a) - covered);
}

static double avg_power_w(const mock_gpu_t *g, double t) { return energy_j(g, t - 1.0, t); }

static unsigned int to_mw(double w) {
    double mw = floor(w * 1000.0 + 0.5);
    if (mw < 0) mw = 0;
    if (mw > 4294967295.0) mw = 4294967295.0;
    return (unsigned int)mw;
}

/* The energy counter at GPU scope (extra_w 0) or module scope (extra_w: the module's own draw). */
static unsigned long long scoped_counter_mj(const mock_gpu_t *g, double t, double extra_w) {
    if (g->granularity_s > 0) t = floor(t / g->granularity_s) * g->granularity_s;
    double origin = g->driver_load_s;
    double offset = g->counter_offset_mj;
    for (int i = 0; i < g->n_resets; i++) {
        double r = g->resets[i];
        if (r <= t && r >= origin) {
            origin = r;
            offset = 0.0;
        }
    }
    double mj = offset;
    if (t > origin) mj += 1000.0 * (energy_j(g, origin, t) + extra_w * (t - origin));
    if (mj < 0) mj = 0;
    return (unsigned long long)floor(mj);
}

/* The scope whole-board calls (GetPowerUsage, GetTotalEnergyConsumption) report: GPU where the
 * board reads GPU scope, else the module (as the total energy counter of GH200 does). */
static double board_extra_w(const mock_gpu_t *g) { return g->scope_gpu ? 0.0 : g->module_extra_w; }

static unsigned long long counter_mj(const mock_gpu_t *g, double t) { return scoped_counter_mj(g, t, board_extra_w(g)); }

static int proc_active(const proc_t *p, const mock_gpu_t *g, double t) {
    return p->gpu == g->index && t >= p->from && t < p->to;
}

static nvmlUtilization_t utilization(const mock_gpu_t *g, double t) {
    nvmlUtilization_t u = {0, 0};
    for (int i = 0; i < g->n_util; i++) {
        const util_piece_t *p = &g->util[i];
        if (t >= p->from && t < p->to) {
            u.gpu = p->gpu;
            u.memory = p->mem;
            return u;
        }
    }
    unsigned long long sm = 0, mem = 0;
    for (int i = 0; i < S.n_procs; i++) {
        if (proc_active(&S.procs[i], g, t)) {
            sm += S.procs[i].sm;
            mem += S.procs[i].mem;
        }
    }
    u.gpu = sm > 100 ? 100 : (unsigned)sm;
    u.memory = mem > 100 ? 100 : (unsigned)mem;
    return u;
}

static int gpu_busy(const mock_gpu_t *g, double t) {
    return utilization(g, t).gpu > 0 || power_w(g, t) > 0.25 * g->power_limit_w;
}

/* ------------------------------------------------------------------ */
/* Error injection                                                      */
/* ------------------------------------------------------------------ */

/* Length of name without a trailing "_v<digits>" suffix. */
static size_t base_len(const char *s) {
    size_t n = strlen(s);
    size_t i = n;
    while (i > 0 && isdigit((unsigned char)s[i - 1])) i--;
    if (i < n && i >= 2 && s[i - 1] == 'v' && s[i - 2] == '_') return i - 2;
    return n;
}

static int func_matches(const char *pattern, const char *fname) {
    if (strcmp(pattern, "*") == 0) return strncmp(fname, "field:", 6) != 0;
    if (strcmp(pattern, fname) == 0) return 1;
    size_t a = base_len(pattern), b = base_len(fname);
    return a == b && strncmp(pattern, fname, a) == 0;
}

static nvmlReturn_t injected(const mock_gpu_t *g, const char *fname, double t) {
    for (int i = 0; i < S.n_errs; i++) {
        const err_t *e = &S.errs[i];
        if ((e->gpu < 0 || (unsigned)e->gpu == g->index) && t >= e->from && t < e->to &&
            func_matches(e->func, fname))
            return e->code;
    }
    return NVML_SUCCESS;
}

/* ------------------------------------------------------------------ */
/* Scenario parser                                                      */
/* ------------------------------------------------------------------ */

static void free_scenario(scenario_t *s) {
    for (int i = 0; i < MAX_GPUS; i++) {
        free(s->gpus[i].resets);
        free(s->gpus[i].pieces);
        free(s->gpus[i].util);
    }
    free(s->procs);
    free(s->errs);
    memset(s, 0, sizeof(*s));
}

#define GROW(arr, n)                                                        \
    do {                                                                    \
        void *_p = realloc((arr), sizeof(*(arr)) * (size_t)((n) + 1));      \
        if (!_p) goto oom;                                                  \
        (arr) = _p;                                                         \
    } while (0)

static int parse_double(char **cur, double *out) {
    char *end;
    while (**cur == ' ' || **cur == '\t') (*cur)++;
    errno = 0;
    *out = strtod(*cur, &end);
    /* ERANGE on underflow (subnormals) is fine; reject overflow only */
    if (end == *cur || (errno == ERANGE && isinf(*out))) return 0;
    *cur = end;
    return 1;
}

static int parse_ull(char **cur, unsigned long long *out) {
    char *end;
    while (**cur == ' ' || **cur == '\t') (*cur)++;
    if (**cur == '-') { /* "-1" means not available */
        long long v = strtoll(*cur, &end, 10);
        if (end == *cur || v != -1) return 0;
        *out = NVML_VALUE_NOT_AVAILABLE_ULL;
        *cur = end;
        return 1;
    }
    errno = 0;
    *out = strtoull(*cur, &end, 0);
    if (end == *cur || errno == ERANGE) return 0;
    *cur = end;
    return 1;
}

static int parse_uint(char **cur, unsigned int *out) {
    unsigned long long v;
    if (!parse_ull(cur, &v) || v > 0xFFFFFFFFull) return 0;
    *out = (unsigned int)v;
    return 1;
}

static int parse_word(char **cur, char *out, size_t cap) {
    while (**cur == ' ' || **cur == '\t') (*cur)++;
    size_t n = 0;
    while (**cur && !isspace((unsigned char)**cur)) {
        if (n + 1 >= cap) return 0;
        out[n++] = *(*cur)++;
    }
    out[n] = 0;
    return n > 0;
}

static int at_end(char *cur) {
    while (*cur && isspace((unsigned char)*cur)) cur++;
    return *cur == 0;
}

static int copy_rest(const char *rest, char *out, size_t cap) {
    size_t n = strlen(rest);
    if (n + 1 > cap) return 0;
    memcpy(out, rest, n + 1);
    return 1;
}

static void set_gpu_defaults(mock_gpu_t *g, unsigned int index) {
    static const unsigned int buses[8] = {0x18, 0x2a, 0x3a, 0x5d, 0x9a, 0xab, 0xba, 0xdb};
    memset(g, 0, sizeof(*g));
    g->present = 1;
    g->index = index;
    snprintf(g->name, sizeof g->name, "NVIDIA H100 80GB HBM3");
    snprintf(g->uuid, sizeof g->uuid, "GPU-00000000-0000-0000-0000-%012x", index);
    snprintf(g->serial, sizeof g->serial, "16523000%05u", index);
    g->minor = index;
    g->arch = 9;
    g->pci_bus = index < 8 ? buses[index] : 0x10 + index;
    g->pci_device_id = 0x233010DE;
    g->pci_subsys_id = 0x16C110DE;
    g->mem_total = 85520809984ULL;
    g->power_limit_w = 700.0;
    g->energy_supported = 1;
    g->proc_util_supported = 1;
    g->gpm_supported = -1; /* resolved after parsing: Hopper (9) and newer */
    g->mig_slots = 7;
    g->scope_gpu = 1;
}

static nvmlReturn_t load_scenario(const char *path, scenario_t *s) {
    char line[4096];
    int lineno = 0;
    mock_gpu_t *g = NULL;
    int have_header = 0, have_t0 = 0;
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "mock-nvml: cannot open scenario %s: %s\n", path, strerror(errno));
        return NVML_ERROR_DRIVER_NOT_LOADED;
    }
    snprintf(s->driver_version, sizeof s->driver_version, "550.54.15");
    snprintf(s->nvml_version, sizeof s->nvml_version, "12.550.54.15");
    s->cuda_version = 12040;

    while (fgets(line, sizeof line, f)) {
        lineno++;
        size_t n = strlen(line);
        if (n == sizeof line - 1 && line[n - 1] != '\n') goto bad;
        while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r' || line[n - 1] == ' ' ||
                         line[n - 1] == '\t'))
            line[--n] = 0;
        char *cur = line;
        while (*cur == ' ' || *cur == '\t') cur++;
        if (*cur == 0 || *cur == '#') continue;

        char key[64];
        if (!parse_word(&cur, key, sizeof key)) goto bad;
        while (*cur == ' ' || *cur == '\t') cur++;
        char *rest = cur; /* remainder of the line, for string values */

        if (!have_header) {
            unsigned int ver;
            if (strcmp(key, "greenwatch-mock-nvml") != 0 || !parse_uint(&cur, &ver) || ver != 1)
                goto bad;
            have_header = 1;
            continue;
        }

        /* ---- top-level keys ---- */
        if (strcmp(key, "gpu") == 0) {
            unsigned int idx;
            if (!parse_uint(&cur, &idx) || !at_end(cur) || idx >= MAX_GPUS ||
                idx != (unsigned)s->n_gpus)
                goto bad;
            g = &s->gpus[idx];
            set_gpu_defaults(g, idx);
            s->n_gpus++;
            continue;
        }
        if (strcmp(key, "end") == 0) {
            if (!g) goto bad;
            g = NULL;
            continue;
        }
        if (strcmp(key, "t0") == 0) {
            double t0;
            if (!parse_double(&cur, &t0) || !at_end(cur)) goto bad;
            s->t0_us = llround(t0 * 1e6);
            have_t0 = 1;
            continue;
        }
        if (strcmp(key, "driver_version") == 0) {
            if (!copy_rest(rest, s->driver_version, sizeof s->driver_version)) goto bad;
            continue;
        }
        if (strcmp(key, "nvml_version") == 0) {
            if (!copy_rest(rest, s->nvml_version, sizeof s->nvml_version)) goto bad;
            continue;
        }
        if (strcmp(key, "cuda_version") == 0) {
            unsigned int v;
            if (!parse_uint(&cur, &v) || !at_end(cur)) goto bad;
            s->cuda_version = (int)v;
            continue;
        }
        if (strcmp(key, "reload_on_change") == 0) {
            unsigned int v;
            if (!parse_uint(&cur, &v) || !at_end(cur) || v > 1) goto bad;
            s->reload_on_change = (int)v;
            continue;
        }
        if (strcmp(key, "init_error") == 0) {
            unsigned int v;
            if (!parse_uint(&cur, &v) || !at_end(cur)) goto bad;
            s->init_error = (nvmlReturn_t)v;
            continue;
        }
        if (strcmp(key, "proc") == 0) {
            proc_t p;
            if (!parse_uint(&cur, &p.pid) || !parse_uint(&cur, &p.gpu) || !parse_uint(&cur, &p.sm) ||
                !parse_uint(&cur, &p.mem) || !parse_ull(&cur, &p.used) ||
                !parse_double(&cur, &p.from) || !parse_double(&cur, &p.to))
                goto bad;
            p.gi = p.ci = -1;
            if (!at_end(cur)) { /* optional: the MIG GPU and compute instance it runs on */
                unsigned int gi, ci;
                if (!parse_uint(&cur, &gi) || !parse_uint(&cur, &ci) || !at_end(cur)) goto bad;
                p.gi = (int)gi;
                p.ci = (int)ci;
            }
            GROW(s->procs, s->n_procs);
            s->procs[s->n_procs++] = p;
            continue;
        }
        if (strcmp(key, "mig") == 0) {
            mock_mig_t m;
            memset(&m, 0, sizeof m);
            if (s->n_migs >= MAX_MIGS || !parse_uint(&cur, &m.gpu) || !parse_uint(&cur, &m.gi) ||
                !parse_uint(&cur, &m.ci) || !parse_uint(&cur, &m.slices) || !parse_double(&cur, &m.from) ||
                !parse_double(&cur, &m.to) || m.slices == 0 || !(m.to > m.from))
                goto bad;
            while (*cur == ' ' || *cur == '\t') cur++;
            if (!copy_rest(cur, m.uuid, sizeof m.uuid) || strncmp(m.uuid, "MIG-", 4) != 0) goto bad;
            s->migs[s->n_migs++] = m;
            continue;
        }
        if (strcmp(key, "error") == 0) {
            err_t e;
            char gw[16];
            unsigned int code;
            memset(&e, 0, sizeof e);
            if (!parse_word(&cur, gw, sizeof gw)) goto bad;
            if (strcmp(gw, "*") == 0) {
                e.gpu = -1;
            } else {
                char *gc = gw;
                unsigned int gi;
                if (!parse_uint(&gc, &gi) || *gc) goto bad;
                e.gpu = (int)gi;
            }
            if (!parse_word(&cur, e.func, sizeof e.func) || !parse_uint(&cur, &code) ||
                !parse_double(&cur, &e.from) || !parse_double(&cur, &e.to) || !at_end(cur))
                goto bad;
            e.code = (nvmlReturn_t)code;
            GROW(s->errs, s->n_errs);
            s->errs[s->n_errs++] = e;
            continue;
        }

        /* ---- per-GPU keys ---- */
        if (!g) goto bad;
        if (strcmp(key, "name") == 0) {
            if (!copy_rest(rest, g->name, sizeof g->name)) goto bad;
        } else if (strcmp(key, "uuid") == 0) {
            if (!copy_rest(rest, g->uuid, sizeof g->uuid)) goto bad;
        } else if (strcmp(key, "serial") == 0) {
            if (!copy_rest(rest, g->serial, sizeof g->serial)) goto bad;
        } else if (strcmp(key, "minor") == 0) {
            if (!parse_uint(&cur, &g->minor) || !at_end(cur)) goto bad;
        } else if (strcmp(key, "arch") == 0) {
            if (!parse_uint(&cur, &g->arch) || !at_end(cur)) goto bad;
        } else if (strcmp(key, "pci_bus") == 0) {
            if (!parse_uint(&cur, &g->pci_bus) || !at_end(cur) || g->pci_bus > 0xff) goto bad;
        } else if (strcmp(key, "pci_device_id") == 0) {
            if (!parse_uint(&cur, &g->pci_device_id) || !at_end(cur)) goto bad;
        } else if (strcmp(key, "memory_total") == 0) {
            if (!parse_ull(&cur, &g->mem_total) || !at_end(cur)) goto bad;
        } else if (strcmp(key, "power_limit_w") == 0) {
            if (!parse_double(&cur, &g->power_limit_w) || !at_end(cur)) goto bad;
        } else if (strcmp(key, "default_w") == 0) {
            if (!parse_double(&cur, &g->default_w) || !at_end(cur)) goto bad;
        } else if (strcmp(key, "power_usage") == 0) {
            char w[16];
            if (!parse_word(&cur, w, sizeof w) || !at_end(cur)) goto bad;
            if (strcmp(w, "instant") == 0) g->power_usage_average = 0;
            else if (strcmp(w, "average") == 0) g->power_usage_average = 1;
            else goto bad;
        } else if (strcmp(key, "energy_counter") == 0) {
            char w[16];
            if (!parse_word(&cur, w, sizeof w) || !at_end(cur)) goto bad;
            if (strcmp(w, "on") == 0) g->energy_supported = 1;
            else if (strcmp(w, "off") == 0) g->energy_supported = 0;
            else goto bad;
        } else if (strcmp(key, "process_utilization") == 0) {
            char w[16];
            if (!parse_word(&cur, w, sizeof w) || !at_end(cur)) goto bad;
            if (strcmp(w, "on") == 0) g->proc_util_supported = 1;
            else if (strcmp(w, "off") == 0) g->proc_util_supported = 0;
            else goto bad;
        } else if (strcmp(key, "mig_mode") == 0 || strcmp(key, "gpm") == 0) {
            char w[16];
            int *flag = key[0] == 'm' ? &g->mig_mode : &g->gpm_supported;
            if (!parse_word(&cur, w, sizeof w) || !at_end(cur)) goto bad;
            if (strcmp(w, "on") == 0) *flag = 1;
            else if (strcmp(w, "off") == 0) *flag = 0;
            else goto bad;
        } else if (strcmp(key, "power_scopes") == 0) {
            char w[16];
            g->scope_gpu = g->scope_module = 0;
            while (!at_end(cur)) {
                if (!parse_word(&cur, w, sizeof w)) goto bad;
                if (strcmp(w, "gpu") == 0) g->scope_gpu = 1;
                else if (strcmp(w, "module") == 0) g->scope_module = 1;
                else goto bad;
            }
        } else if (strcmp(key, "field_timestamps") == 0) {
            char w[16];
            if (!parse_word(&cur, w, sizeof w) || !at_end(cur)) goto bad;
            if (strcmp(w, "frozen") == 0) g->frozen_timestamps = 1;
            else if (strcmp(w, "advancing") == 0) g->frozen_timestamps = 0;
            else goto bad;
        } else if (strcmp(key, "module_extra_w") == 0) {
            if (!parse_double(&cur, &g->module_extra_w) || !at_end(cur) || !(g->module_extra_w >= 0)) goto bad;
        } else if (strcmp(key, "mig_slots") == 0) {
            if (!parse_uint(&cur, &g->mig_slots) || !at_end(cur) || g->mig_slots == 0) goto bad;
        } else if (strcmp(key, "counter_offset_mj") == 0) {
            if (!parse_double(&cur, &g->counter_offset_mj) || !at_end(cur)) goto bad;
        } else if (strcmp(key, "counter_granularity_s") == 0) {
            if (!parse_double(&cur, &g->granularity_s) || !at_end(cur) || g->granularity_s < 0)
                goto bad;
        } else if (strcmp(key, "driver_load_s") == 0) {
            if (!parse_double(&cur, &g->driver_load_s) || !at_end(cur)) goto bad;
        } else if (strcmp(key, "reset") == 0) {
            double r;
            if (!parse_double(&cur, &r) || !at_end(cur)) goto bad;
            GROW(g->resets, g->n_resets);
            g->resets[g->n_resets++] = r;
        } else if (strcmp(key, "util") == 0) {
            util_piece_t u;
            if (!parse_double(&cur, &u.from) || !parse_double(&cur, &u.to) ||
                !parse_uint(&cur, &u.gpu) || !parse_uint(&cur, &u.mem) || !at_end(cur) ||
                u.gpu > 100 || u.mem > 100)
                goto bad;
            GROW(g->util, g->n_util);
            g->util[g->n_util++] = u;
        } else if (strcmp(key, "piece") == 0) {
            piece_t p;
            char kind[16];
            memset(&p, 0, sizeof p);
            if (!parse_word(&cur, kind, sizeof kind) || !parse_double(&cur, &p.from) ||
                !parse_double(&cur, &p.to) || !(p.to > p.from))
                goto bad;
            if (strcmp(kind, "const") == 0) {
                p.kind = PIECE_CONST;
                if (!parse_double(&cur, &p.a)) goto bad;
            } else if (strcmp(kind, "square") == 0) {
                p.kind = PIECE_SQUARE;
                if (!parse_double(&cur, &p.a) || !parse_double(&cur, &p.b) ||
                    !parse_double(&cur, &p.period) || !parse_double(&cur, &p.duty) ||
                    !parse_double(&cur, &p.phase) || !(p.period > 0) || p.duty < 0 || p.duty > 1)
                    goto bad;
            } else if (strcmp(kind, "ramp") == 0) {
                p.kind = PIECE_RAMP;
                if (!parse_double(&cur, &p.a) || !parse_double(&cur, &p.b) || !isfinite(p.from) ||
                    !isfinite(p.to))
                    goto bad;
            } else {
                goto bad;
            }
            if (!at_end(cur)) goto bad;
            GROW(g->pieces, g->n_pieces);
            g->pieces[g->n_pieces++] = p;
        } else {
            goto bad;
        }
    }
    fclose(f);
    if (!have_header || !have_t0 || g != NULL) {
        fprintf(stderr, "mock-nvml: %s: incomplete scenario (header/t0/unterminated gpu)\n", path);
        return NVML_ERROR_UNKNOWN;
    }
    for (int i = 0; i < s->n_gpus; i++) {
        mock_gpu_t *d = &s->gpus[i];
        snprintf(d->bus_id, sizeof d->bus_id, "00000000:%02X:00.0", d->pci_bus);
        if (d->gpm_supported < 0) d->gpm_supported = d->arch >= 9;
    }
    for (int i = 0; i < s->n_migs; i++)
        if (s->migs[i].gpu >= (unsigned)s->n_gpus) {
            fprintf(stderr, "mock-nvml: %s: MIG device on GPU %u, which does not exist\n", path, s->migs[i].gpu);
            return NVML_ERROR_UNKNOWN;
        }
    return NVML_SUCCESS;

bad:
    fprintf(stderr, "mock-nvml: %s:%d: cannot parse: %s\n", path, lineno, line);
    fclose(f);
    return NVML_ERROR_UNKNOWN;
oom:
    fclose(f);
    return NVML_ERROR_UNKNOWN;
}

/* ------------------------------------------------------------------ */
/* API helpers                                                          */
/* ------------------------------------------------------------------ */

static int same_file(const struct stat *a, const struct stat *b) {
    return a->st_dev == b->st_dev && a->st_ino == b->st_ino && a->st_size == b->st_size &&
           a->st_mtim.tv_sec == b->st_mtim.tv_sec && a->st_mtim.tv_nsec == b->st_mtim.tv_nsec;
}

/* With `reload_on_change 1`, re-read the scenario when its file was replaced (checked at most
 * every 20 ms, under g_mu).  Tests use it to add processes whose PIDs exist only after the
 * library was initialised.  A file that fails to parse keeps the previous scenario. */
static void maybe_reload(void) {
    if (!S.reload_on_change || !g_path[0]) return;
    long long now = now_us();
    if (now - g_last_check_us < RELOAD_CHECK_INTERVAL_US) return;
    g_last_check_us = now;
    g_file_checks++;
    struct stat st;
    if (stat(g_path, &st) != 0 || same_file(&st, &g_loaded_st)) return;
    g_loaded_st = st; /* even on a parse error: report it once, not on every call */
    scenario_t *ns = calloc(1, sizeof *ns);
    if (!ns) return;
    if (load_scenario(g_path, ns) != NVML_SUCCESS) {
        fprintf(stderr, "mock-nvml: keeping the previous scenario\n");
        free_scenario(ns);
        free(ns);
        return;
    }
    free_scenario(&S);
    S = *ns; /* handles (&S.gpus[i]) keep their addresses */
    free(ns);
}

#define LOCKED_BEGIN()                                  \
    pthread_mutex_lock(&g_mu);                          \
    if (g_init_count <= 0) {                            \
        pthread_mutex_unlock(&g_mu);                    \
        return NVML_ERROR_UNINITIALIZED;                \
    }                                                   \
    maybe_reload();

#define RET(x)                                          \
    do {                                                \
        nvmlReturn_t _r = (x);                          \
        pthread_mutex_unlock(&g_mu);                    \
        return _r;                                      \
    } while (0)

/* MIG device handles point into S.migs (never into S.gpus); see the MIG section at the end. */
static int is_mig_handle(const void *d) { return d >= (const void *)&S.migs[0] && d < (const void *)&S.migs[MAX_MIGS]; }
static nvmlReturn_t mig_get_uuid(nvmlDevice_t dev, char *uuid, unsigned int length);
static nvmlReturn_t mig_running_processes(nvmlDevice_t dev, unsigned int *count, void *infos, int version);

static int valid_device(nvmlDevice_t d) {
    return d != NULL && d >= &S.gpus[0] && d < &S.gpus[S.n_gpus] && d->present;
}

/* Common prologue for per-device functions: lock, init/handle/injection checks.
 * Defines `long long t_us` and `double t` (relative seconds). */
#define DEV_BEGIN(dev, fname)                                               \
    LOCKED_BEGIN();                                                         \
    if (!valid_device(dev)) RET(NVML_ERROR_INVALID_ARGUMENT);               \
    long long t_us = now_us();                                              \
    double t = rel_s(t_us);                                                 \
    (void)t_us;                                                             \
    {                                                                       \
        nvmlReturn_t _e = injected((dev), (fname), t);                      \
        if (_e != NVML_SUCCESS) RET(_e);                                    \
    }

static nvmlReturn_t copy_str(char *dst, unsigned int len, const char *src) {
    if (!dst) return NVML_ERROR_INVALID_ARGUMENT;
    size_t n = strlen(src);
    if ((size_t)len < n + 1) return NVML_ERROR_INSUFFICIENT_SIZE;
    memcpy(dst, src, n + 1);
    return NVML_SUCCESS;
}

/* ------------------------------------------------------------------ */
/* Init / shutdown / system                                            */
/* ------------------------------------------------------------------ */

EXPORT nvmlReturn_t nvmlInitWithFlags(unsigned int flags) {
    (void)flags;
    const char *path = getenv("GREENWATCH_MOCK_NVML_SCENARIO");
    if (!path || !*path) {
        fprintf(stderr, "mock-nvml: GREENWATCH_MOCK_NVML_SCENARIO is not set\n");
        return NVML_ERROR_DRIVER_NOT_LOADED;
    }
    scenario_t *ns = calloc(1, sizeof *ns);
    if (!ns) return NVML_ERROR_UNKNOWN;
    struct stat st;
    int have_st = stat(path, &st) == 0; /* before reading: a change during the read is seen later */
    nvmlReturn_t r = load_scenario(path, ns);
    if (r == NVML_SUCCESS && ns->init_error != NVML_SUCCESS) r = ns->init_error;
    if (r != NVML_SUCCESS) {
        free_scenario(ns);
        free(ns);
        return r;
    }
    pthread_mutex_lock(&g_mu);
    free_scenario(&S);
    S = *ns; /* struct copy: handle addresses (&S.gpus[i]) do not change */
    snprintf(g_path, sizeof g_path, "%s", path);
    if (have_st) g_loaded_st = st;
    else memset(&g_loaded_st, 0, sizeof g_loaded_st);
    g_last_check_us = now_us();
    g_init_count++;
    pthread_mutex_unlock(&g_mu);
    free(ns);
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlInit_v2(void) { return nvmlInitWithFlags(0); }
EXPORT nvmlReturn_t nvmlInit(void) { return nvmlInitWithFlags(0); }

EXPORT nvmlReturn_t nvmlShutdown(void) {
    LOCKED_BEGIN();
    g_init_count--;
    RET(NVML_SUCCESS);
}

EXPORT const char *nvmlErrorString(nvmlReturn_t r) {
    switch (r) {
    case 0: return "Success";
    case 1: return "Uninitialized";
    case 2: return "Invalid Argument";
    case 3: return "Not Supported";
    case 4: return "Insufficient Permissions";
    case 5: return "Already Initialized";
    case 6: return "Not Found";
    case 7: return "Insufficient Size";
    case 8: return "Insufficient External Power";
    case 9: return "Driver Not Loaded";
    case 10: return "Timeout";
    case 11: return "Interrupt request issue";
    case 12: return "NVML Shared Library Not Found";
    case 13: return "Function Not Found";
    case 14: return "Corrupted infoROM";
    case 15: return "GPU is lost";
    case 16: return "GPU requires restart";
    case 17: return "The operating system has blocked the request.";
    case 18: return "RM has detected an NVML/RM version mismatch.";
    case 19: return "In use by another client";
    case 20: return "Insufficient Memory";
    case 21: return "No data";
    case 25: return "Argument version mismatch";
    case 27: return "Not Ready";
    case 28: return "GPU not found";
    case 29: return "Invalid state";
    default: return "Unknown Error";
    }
}

EXPORT nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned int length) {
    LOCKED_BEGIN();
    RET(copy_str(version, length, S.driver_version));
}

EXPORT nvmlReturn_t nvmlSystemGetNVMLVersion(char *version, unsigned int length) {
    LOCKED_BEGIN();
    RET(copy_str(version, length, S.nvml_version));
}

EXPORT nvmlReturn_t nvmlSystemGetCudaDriverVersion(int *v) {
    LOCKED_BEGIN();
    if (!v) RET(NVML_ERROR_INVALID_ARGUMENT);
    *v = S.cuda_version;
    RET(NVML_SUCCESS);
}

EXPORT nvmlReturn_t nvmlSystemGetCudaDriverVersion_v2(int *v) { return nvmlSystemGetCudaDriverVersion(v); }

/* Marker so tests can check which libnvidia-ml.so.1 was loaded. */
EXPORT int greenwatchMockNvmlVersion(void) { return 1; }

/* How many times the scenario file has been compared with the loaded one since the library
 * was loaded (only with reload_on_change).  A test that replaced the file waits until this
 * grows: from then on the library has seen the new file. */
EXPORT long long greenwatchMockNvmlFileChecks(void) {
    pthread_mutex_lock(&g_mu);
    long long n = g_file_checks;
    pthread_mutex_unlock(&g_mu);
    return n;
}

/* ------------------------------------------------------------------ */
/* Device enumeration and identity                                      */
/* ------------------------------------------------------------------ */

EXPORT nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *count) {
    LOCKED_BEGIN();
    if (!count) RET(NVML_ERROR_INVALID_ARGUMENT);
    *count = (unsigned)S.n_gpus;
    RET(NVML_SUCCESS);
}

EXPORT nvmlReturn_t nvmlDeviceGetCount(unsigned int *count) { return nvmlDeviceGetCount_v2(count); }

static nvmlReturn_t handle_result(mock_gpu_t *g, const char *fname, nvmlDevice_t *device) {
    nvmlReturn_t e = injected(g, fname, rel_s(now_us()));
    if (e != NVML_SUCCESS) return e;
    *device = g;
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device) {
    LOCKED_BEGIN();
    if (!device || index >= (unsigned)S.n_gpus) RET(NVML_ERROR_INVALID_ARGUMENT);
    RET(handle_result(&S.gpus[index], "nvmlDeviceGetHandleByIndex", device));
}

EXPORT nvmlReturn_t nvmlDeviceGetHandleByIndex(unsigned int index, nvmlDevice_t *device) {
    return nvmlDeviceGetHandleByIndex_v2(index, device);
}

EXPORT nvmlReturn_t nvmlDeviceGetHandleByUUID(const char *uuid, nvmlDevice_t *device) {
    LOCKED_BEGIN();
    if (!uuid || !device) RET(NVML_ERROR_INVALID_ARGUMENT);
    for (int i = 0; i < S.n_gpus; i++)
        if (strcmp(S.gpus[i].uuid, uuid) == 0)
            RET(handle_result(&S.gpus[i], "nvmlDeviceGetHandleByUUID", device));
    RET(NVML_ERROR_NOT_FOUND);
}

EXPORT nvmlReturn_t nvmlDeviceGetHandleBySerial(const char *serial, nvmlDevice_t *device) {
    LOCKED_BEGIN();
    if (!serial || !device) RET(NVML_ERROR_INVALID_ARGUMENT);
    for (int i = 0; i < S.n_gpus; i++)
        if (strcmp(S.gpus[i].serial, serial) == 0)
            RET(handle_result(&S.gpus[i], "nvmlDeviceGetHandleBySerial", device));
    RET(NVML_ERROR_NOT_FOUND);
}

EXPORT nvmlReturn_t nvmlDeviceGetHandleByPciBusId_v2(const char *bus_id, nvmlDevice_t *device) {
    LOCKED_BEGIN();
    if (!bus_id || !device) RET(NVML_ERROR_INVALID_ARGUMENT);
    for (int i = 0; i < S.n_gpus; i++)
        if (strcasecmp(S.gpus[i].bus_id, bus_id) == 0 ||
            strcasecmp(S.gpus[i].bus_id + 4, bus_id) == 0)
            RET(handle_result(&S.gpus[i], "nvmlDeviceGetHandleByPciBusId", device));
    RET(NVML_ERROR_NOT_FOUND);
}

EXPORT nvmlReturn_t nvmlDeviceGetIndex(nvmlDevice_t dev, unsigned int *index) {
    DEV_BEGIN(dev, "nvmlDeviceGetIndex");
    if (!index) RET(NVML_ERROR_INVALID_ARGUMENT);
    *index = dev->index;
    RET(NVML_SUCCESS);
}

EXPORT nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t dev, char *uuid, unsigned int length) {
    if (is_mig_handle(dev)) return mig_get_uuid(dev, uuid, length);
    DEV_BEGIN(dev, "nvmlDeviceGetUUID");
    RET(copy_str(uuid, length, dev->uuid));
}

EXPORT nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t dev, char *name, unsigned int length) {
    DEV_BEGIN(dev, "nvmlDeviceGetName");
    RET(copy_str(name, length, dev->name));
}

EXPORT nvmlReturn_t nvmlDeviceGetSerial(nvmlDevice_t dev, char *serial, unsigned int length) {
    DEV_BEGIN(dev, "nvmlDeviceGetSerial");
    RET(copy_str(serial, length, dev->serial));
}

EXPORT nvmlReturn_t nvmlDeviceGetMinorNumber(nvmlDevice_t dev, unsigned int *minor) {
    DEV_BEGIN(dev, "nvmlDeviceGetMinorNumber");
    if (!minor) RET(NVML_ERROR_INVALID_ARGUMENT);
    *minor = dev->minor;
    RET(NVML_SUCCESS);
}

EXPORT nvmlReturn_t nvmlDeviceGetArchitecture(nvmlDevice_t dev, unsigned int *arch) {
    DEV_BEGIN(dev, "nvmlDeviceGetArchitecture");
    if (!arch) RET(NVML_ERROR_INVALID_ARGUMENT);
    *arch = dev->arch;
    RET(NVML_SUCCESS);
}

EXPORT nvmlReturn_t nvmlDeviceGetPciInfo_v3(nvmlDevice_t dev, nvmlPciInfo_t *pci) {
    DEV_BEGIN(dev, "nvmlDeviceGetPciInfo");
    if (!pci) RET(NVML_ERROR_INVALID_ARGUMENT);
    memset(pci, 0, sizeof *pci);
    snprintf(pci->busIdLegacy, sizeof pci->busIdLegacy, "%s", dev->bus_id + 4);
    snprintf(pci->busId, sizeof pci->busId, "%s", dev->bus_id);
    pci->domain = 0;
    pci->bus = dev->pci_bus;
    pci->device = 0;
    pci->pciDeviceId = dev->pci_device_id;
    pci->pciSubSystemId = dev->pci_subsys_id;
    RET(NVML_SUCCESS);
}

/* ------------------------------------------------------------------ */
/* Power / energy / thermal / clocks                                     */
/* ------------------------------------------------------------------ */

EXPORT nvmlReturn_t nvmlDeviceGetPowerUsage(nvmlDevice_t dev, unsigned int *power) {
    DEV_BEGIN(dev, "nvmlDeviceGetPowerUsage");
    if (!power) RET(NVML_ERROR_INVALID_ARGUMENT);
    *power = to_mw((dev->power_usage_average ? avg_power_w(dev, t) : power_w(dev, t)) + board_extra_w(dev));
    RET(NVML_SUCCESS);
}

EXPORT nvmlReturn_t nvmlDeviceGetTotalEnergyConsumption(nvmlDevice_t dev, unsigned long long *energy) {
    DEV_BEGIN(dev, "nvmlDeviceGetTotalEnergyConsumption");
    if (!energy) RET(NVML_ERROR_INVALID_ARGUMENT);
    if (!dev->energy_supported) RET(NVML_ERROR_NOT_SUPPORTED);
    *energy = counter_mj(dev, t);
    RET(NVML_SUCCESS);
}

EXPORT nvmlReturn_t nvmlDeviceGetPowerManagementLimit(nvmlDevice_t dev, unsigned int *limit) {
    DEV_BEGIN(dev, "nvmlDeviceGetPowerManagementLimit");
    if (!limit) RET(NVML_ERROR_INVALID_ARGUMENT);
    *limit = to_mw(dev->power_limit_w);
    RET(NVML_SUCCESS);
}

EXPORT nvmlReturn_t nvmlDeviceGetPowerManagementDefaultLimit(nvmlDevice_t dev, unsigned int *limit) {
    DEV_BEGIN(dev, "nvmlDeviceGetPowerManagementDefaultLimit");
    if (!limit) RET(NVML_ERROR_INVALID_ARGUMENT);
    *limit = to_mw(dev->power_limit_w);
    RET(NVML_SUCCESS);
}

EXPORT nvmlReturn_t nvmlDeviceGetEnforcedPowerLimit(nvmlDevice_t dev, unsigned int *limit) {
    DEV_BEGIN(dev, "nvmlDeviceGetEnforcedPowerLimit");
    if (!limit) RET(NVML_ERROR_INVALID_ARGUMENT);
    *limit = to_mw(dev->power_limit_w);
    RET(NVML_SUCCESS);
}

static unsigned int temperature_c(const mock_gpu_t *g, double t) {
    double c = 30.0 + power_w(g, t) / 10.0;
    if (c > 95.0) c = 95.0;
    return (unsigned int)c;
}

EXPORT nvmlReturn_t nvmlDeviceGetTemperature(nvmlDevice_t dev, int sensor, unsigned int *temp) {
    DEV_BEGIN(dev, "nvmlDeviceGetTemperature");
    if (!temp || sensor != NVML_TEMPERATURE_GPU) RET(NVML_ERROR_INVALID_ARGUMENT);
    *temp = temperature_c(dev, t);
    RET(NVML_SUCCESS);
}

EXPORT nvmlReturn_t nvmlDeviceGetTemperatureV(nvmlDevice_t dev, nvmlTemperature_v1_t *temp) {
    DEV_BEGIN(dev, "nvmlDeviceGetTemperatureV");
    if (!temp) RET(NVML_ERROR_INVALID_ARGUMENT);
    if (temp->version != nvmlTemperature_v1) RET(NVML_ERROR_ARGUMENT_VERSION_MISMATCH);
    if (temp->sensorType != NVML_TEMPERATURE_GPU) RET(NVML_ERROR_INVALID_ARGUMENT);
    temp->temperature = (int)temperature_c(dev, t);
    RET(NVML_SUCCESS);
}

static int clock_mhz(const mock_gpu_t *g, double t, int type, int max) {
    int busy = max || gpu_busy(g, t);
    switch (type) {
    case NVML_CLOCK_GRAPHICS:
    case NVML_CLOCK_SM: return busy ? 1980 : 345;
    case NVML_CLOCK_MEM: return 2619;
    case NVML_CLOCK_VIDEO: return busy ? 1755 : 765;
    }
    return -1;
}

EXPORT nvmlReturn_t nvmlDeviceGetClockInfo(nvmlDevice_t dev, int type, unsigned int *clock) {
    DEV_BEGIN(dev, "nvmlDeviceGetClockInfo");
    int c = clock_mhz(dev, t, type, 0);
    if (!clock || c < 0) RET(NVML_ERROR_INVALID_ARGUMENT);
    *clock = (unsigned)c;
    RET(NVML_SUCCESS);
}

EXPORT nvmlReturn_t nvmlDeviceGetMaxClockInfo(nvmlDevice_t dev, int type, unsigned int *clock) {
    DEV_BEGIN(dev, "nvmlDeviceGetMaxClockInfo");
    int c = clock_mhz(dev, t, type, 1);
    if (!clock || c < 0) RET(NVML_ERROR_INVALID_ARGUMENT);
    *clock = (unsigned)c;
    RET(NVML_SUCCESS);
}

/* ------------------------------------------------------------------ */
/* Field values                                                          */
/* ------------------------------------------------------------------ */

EXPORT nvmlReturn_t nvmlDeviceGetFieldValues(nvmlDevice_t dev, int valuesCount, nvmlFieldValue_t *values) {
    DEV_BEGIN(dev, "nvmlDeviceGetFieldValues");
    if (valuesCount < 0 || (valuesCount > 0 && !values)) RET(NVML_ERROR_INVALID_ARGUMENT);
    for (int i = 0; i < valuesCount; i++) {
        nvmlFieldValue_t *v = &values[i];
        char fname[32];
        snprintf(fname, sizeof fname, "field:%u", v->fieldId);
        v->timestamp = dev->frozen_timestamps ? S.t0_us : t_us;
        v->latencyUsec = 0;
        v->value.ullVal = 0;
        v->nvmlReturn = injected(dev, fname, t);
        if (v->nvmlReturn != NVML_SUCCESS) continue;
        /* Power and energy fields read the scope in scopeId: 0 GPU, 1 module; other scopes
         * (2 memory) and scopes the board does not report answer NOT_SUPPORTED. */
        double extra_w = 0.0;
        switch (v->fieldId) {
        case NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION:
        case NVML_FI_DEV_ENERGY:
        case NVML_FI_DEV_POWER_AVERAGE:
        case NVML_FI_DEV_POWER_INSTANT:
            if ((v->scopeId == 0 && !dev->scope_gpu) || (v->scopeId == 1 && !dev->scope_module) || v->scopeId > 1) {
                v->nvmlReturn = NVML_ERROR_NOT_SUPPORTED;
                continue;
            }
            if (v->scopeId == 1) extra_w = dev->module_extra_w;
        }
        switch (v->fieldId) {
        case NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION:
        case NVML_FI_DEV_ENERGY:
            if (!dev->energy_supported) {
                v->nvmlReturn = NVML_ERROR_NOT_SUPPORTED;
                break;
            }
            v->valueType = NVML_VALUE_TYPE_UNSIGNED_LONG_LONG;
            v->value.ullVal = scoped_counter_mj(dev, t, extra_w);
            break;
        case NVML_FI_DEV_POWER_AVERAGE:
            v->valueType = NVML_VALUE_TYPE_UNSIGNED_INT;
            v->value.uiVal = to_mw(avg_power_w(dev, t) + extra_w);
            break;
        case NVML_FI_DEV_POWER_INSTANT:
            v->valueType = NVML_VALUE_TYPE_UNSIGNED_INT;
            v->value.uiVal = to_mw(power_w(dev, t) + extra_w);
            break;
        case NVML_FI_DEV_POWER_CURRENT_LIMIT:
        case NVML_FI_DEV_POWER_MAX_LIMIT:
        case NVML_FI_DEV_POWER_DEFAULT_LIMIT:
            v->valueType = NVML_VALUE_TYPE_UNSIGNED_INT;
            v->value.uiVal = to_mw(dev->power_limit_w);
            break;
        case NVML_FI_DEV_POWER_MIN_LIMIT:
            v->valueType = NVML_VALUE_TYPE_UNSIGNED_INT;
            v->value.uiVal = to_mw(dev->power_limit_w * 0.3);
            break;
        default:
            v->nvmlReturn = NVML_ERROR_NOT_SUPPORTED;
        }
    }
    RET(NVML_SUCCESS);
}

/* ------------------------------------------------------------------ */
/* Utilisation, memory, processes                                        */
/* ------------------------------------------------------------------ */

EXPORT nvmlReturn_t nvmlDeviceGetUtilizationRates(nvmlDevice_t dev, nvmlUtilization_t *util) {
    DEV_BEGIN(dev, "nvmlDeviceGetUtilizationRates");
    if (!util) RET(NVML_ERROR_INVALID_ARGUMENT);
    if (dev->mig_mode) RET(NVML_ERROR_NOT_SUPPORTED); /* a board in MIG mode has no board-wide utilisation */
    *util = utilization(dev, t);
    RET(NVML_SUCCESS);
}

static unsigned long long used_memory(const mock_gpu_t *g, double t) {
    unsigned long long used = 0;
    for (int i = 0; i < S.n_procs; i++)
        if (proc_active(&S.procs[i], g, t) && S.procs[i].used != NVML_VALUE_NOT_AVAILABLE_ULL)
            used += S.procs[i].used;
    return used > g->mem_total ? g->mem_total : used;
}

EXPORT nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t dev, nvmlMemory_t *mem) {
    DEV_BEGIN(dev, "nvmlDeviceGetMemoryInfo");
    if (!mem) RET(NVML_ERROR_INVALID_ARGUMENT);
    mem->total = dev->mem_total;
    mem->used = used_memory(dev, t);
    mem->free = mem->total - mem->used;
    RET(NVML_SUCCESS);
}

EXPORT nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t dev, nvmlMemory_v2_t *mem) {
    DEV_BEGIN(dev, "nvmlDeviceGetMemoryInfo_v2");
    if (!mem) RET(NVML_ERROR_INVALID_ARGUMENT);
    if (mem->version != nvmlMemory_v2) RET(NVML_ERROR_ARGUMENT_VERSION_MISMATCH);
    mem->total = dev->mem_total;
    mem->reserved = 0;
    mem->used = used_memory(dev, t);
    mem->free = mem->total - mem->used;
    RET(NVML_SUCCESS);
}

static unsigned int count_active(const mock_gpu_t *g, double t) {
    unsigned int n = 0;
    for (int i = 0; i < S.n_procs; i++)
        if (proc_active(&S.procs[i], g, t)) n++;
    return n;
}

/* Shared body of the *RunningProcesses calls; `version` selects the struct. */
static nvmlReturn_t running_processes(const mock_gpu_t *g, double t, unsigned int *count,
                                      void *infos, int version) {
    if (!count) return NVML_ERROR_INVALID_ARGUMENT;
    unsigned int n = count_active(g, t);
    if (n == 0) {
        *count = 0;
        return NVML_SUCCESS;
    }
    if (!infos || *count < n) {
        *count = n;
        return NVML_ERROR_INSUFFICIENT_SIZE;
    }
    unsigned int k = 0;
    for (int i = 0; i < S.n_procs; i++) {
        const proc_t *p = &S.procs[i];
        if (!proc_active(p, g, t)) continue;
        if (version == 1) {
            nvmlProcessInfo_v1_t *o = &((nvmlProcessInfo_v1_t *)infos)[k++];
            o->pid = p->pid;
            o->usedGpuMemory = p->used;
        } else {
            nvmlProcessInfo_v2_t *o = &((nvmlProcessInfo_v2_t *)infos)[k++];
            o->pid = p->pid;
            o->usedGpuMemory = p->used;
            int mig = g->mig_mode && p->gi >= 0;
            o->gpuInstanceId = mig ? (unsigned)p->gi : NVML_VALUE_NOT_AVAILABLE_UINT;
            o->computeInstanceId = mig ? (unsigned)p->ci : NVML_VALUE_NOT_AVAILABLE_UINT;
        }
    }
    *count = n;
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v3(nvmlDevice_t dev, unsigned int *count,
                                                            nvmlProcessInfo_v2_t *infos) {
    if (is_mig_handle(dev)) return mig_running_processes(dev, count, infos, 3);
    DEV_BEGIN(dev, "nvmlDeviceGetComputeRunningProcesses_v3");
    RET(running_processes(dev, t, count, infos, 3));
}

EXPORT nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v2(nvmlDevice_t dev, unsigned int *count,
                                                            nvmlProcessInfo_v2_t *infos) {
    if (is_mig_handle(dev)) return mig_running_processes(dev, count, infos, 2);
    DEV_BEGIN(dev, "nvmlDeviceGetComputeRunningProcesses_v2");
    RET(running_processes(dev, t, count, infos, 2));
}

EXPORT nvmlReturn_t nvmlDeviceGetComputeRunningProcesses(nvmlDevice_t dev, unsigned int *count,
                                                         nvmlProcessInfo_v1_t *infos) {
    if (is_mig_handle(dev)) return mig_running_processes(dev, count, infos, 1);
    DEV_BEGIN(dev, "nvmlDeviceGetComputeRunningProcesses");
    RET(running_processes(dev, t, count, infos, 1));
}

/* The mock has no graphics contexts: always an empty list. */
static nvmlReturn_t no_processes(unsigned int *count) {
    if (!count) return NVML_ERROR_INVALID_ARGUMENT;
    *count = 0;
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetGraphicsRunningProcesses_v3(nvmlDevice_t dev, unsigned int *count,
                                                             nvmlProcessInfo_v2_t *infos) {
    (void)infos;
    DEV_BEGIN(dev, "nvmlDeviceGetGraphicsRunningProcesses_v3");
    RET(no_processes(count));
}

EXPORT nvmlReturn_t nvmlDeviceGetGraphicsRunningProcesses_v2(nvmlDevice_t dev, unsigned int *count,
                                                             nvmlProcessInfo_v2_t *infos) {
    (void)infos;
    DEV_BEGIN(dev, "nvmlDeviceGetGraphicsRunningProcesses_v2");
    RET(no_processes(count));
}

EXPORT nvmlReturn_t nvmlDeviceGetProcessUtilization(nvmlDevice_t dev,
                                                    nvmlProcessUtilizationSample_t *samples,
                                                    unsigned int *count,
                                                    unsigned long long lastSeenTimeStamp) {
    DEV_BEGIN(dev, "nvmlDeviceGetProcessUtilization");
    if (!count) RET(NVML_ERROR_INVALID_ARGUMENT);
    if (!dev->proc_util_supported || dev->mig_mode) RET(NVML_ERROR_NOT_SUPPORTED); /* not in MIG mode */
    unsigned int n = 0;
    if ((unsigned long long)t_us > lastSeenTimeStamp) n = count_active(dev, t);
    if (n == 0) {
        *count = 0;
        RET(NVML_ERROR_NOT_FOUND);
    }
    if (!samples || *count < n) {
        *count = n;
        RET(NVML_ERROR_INSUFFICIENT_SIZE);
    }
    unsigned int k = 0;
    for (int i = 0; i < S.n_procs; i++) {
        const proc_t *p = &S.procs[i];
        if (!proc_active(p, dev, t)) continue;
        nvmlProcessUtilizationSample_t *o = &samples[k++];
        o->pid = p->pid;
        o->timeStamp = (unsigned long long)t_us;
        o->smUtil = p->sm;
        o->memUtil = p->mem;
        o->encUtil = 0;
        o->decUtil = 0;
    }
    *count = n;
    RET(NVML_SUCCESS);
}

/* ------------------------------------------------------------------ */
/* MIG devices and GPM (GPU performance monitoring)                     */
/* ------------------------------------------------------------------ */
/* Semantics follow nvml.h: energy and power exist for the board only; a MIG device has its own
 * UUID ("MIG-..."), GPU and compute instance ids, slice counts (nvmlDeviceGetAttributes) and
 * processes; on Hopper and newer GPM samples one GPU instance (nvmlGpmMigSampleGet), and
 * nvmlGpmMetricsGet turns two samples into NVML_GPM_METRIC_SM_UTIL, the percentage of the
 * instance's SMs that were busy between them.  The mock's SM activity of an instance is
 * min(100, sum of its active processes' sm%), integrated exactly between the two samples. */

#define NVML_DEVICE_MIG_DISABLE 0
#define NVML_DEVICE_MIG_ENABLE 1
#define NVML_GPM_METRIC_SM_UTIL 2
#define NVML_GPM_METRICS_GET_VERSION 1
#define NVML_GPM_SUPPORT_VERSION 1
#define GPM_SAMPLE_MAGIC 0x47504d53u
#define GPM_MAX_METRICS 1024

typedef struct {
    unsigned int version;
    unsigned int isSupportedDevice;
} nvmlGpmSupport_t;

typedef struct {
    unsigned int magic;
    const mock_gpu_t *dev;
    int gi; /* -1: the whole board */
    long long t_us;
} gpm_sample_t;

typedef struct {
    char *shortName;
    char *longName;
    char *unit;
} gpm_metric_info_t;

typedef struct {
    unsigned int metricId;
    nvmlReturn_t nvmlReturn;
    double value;
    gpm_metric_info_t metricInfo;
} gpm_metric_t;

typedef struct {
    unsigned int version;
    unsigned int numMetrics;
    gpm_sample_t *sample1;
    gpm_sample_t *sample2;
    gpm_metric_t metrics[]; /* numMetrics entries (nvml.h sizes it NVML_GPM_METRIC_MAX) */
} gpm_metrics_get_t;

typedef struct {
    unsigned int multiprocessorCount;
    unsigned int sharedCopyEngineCount;
    unsigned int sharedDecoderCount;
    unsigned int sharedEncoderCount;
    unsigned int sharedJpegCount;
    unsigned int sharedOfaCount;
    unsigned int gpuInstanceSliceCount;
    unsigned int computeInstanceSliceCount;
    unsigned long long memorySizeMB;
} nvmlDeviceAttributes_t;

_Static_assert(sizeof(gpm_metric_t) == 40, "nvmlGpmMetric_t layout");
_Static_assert(sizeof(nvmlDeviceAttributes_t) == 40, "nvmlDeviceAttributes_t layout");

static int mig_exists(const mock_mig_t *m, double t) {
    return S.gpus[m->gpu].mig_mode && t >= m->from && t < m->to;
}

static int proc_on_mig(const proc_t *p, const mock_mig_t *m, double t) {
    return p->gpu == m->gpu && p->gi == (int)m->gi && p->ci == (int)m->ci && t >= p->from && t < p->to;
}

/* SM activity (%) of GPU instance gi of board g at t (gi = -1: every process of the board). */
static double instance_activity(const mock_gpu_t *g, int gi, double t) {
    unsigned long long sm = 0;
    for (int i = 0; i < S.n_procs; i++) {
        const proc_t *p = &S.procs[i];
        if (proc_active(p, g, t) && (gi < 0 || p->gi == gi)) sm += p->sm;
    }
    return sm > 100 ? 100.0 : (double)sm;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Exact integral of instance_activity over [a, b] (percent-seconds): it is piecewise constant
 * between the processes' start and end times. */
static double activity_integral(const mock_gpu_t *g, int gi, double a, double b) {
    if (b <= a) return 0.0;
    double *cuts = malloc(sizeof(double) * (size_t)(2 * S.n_procs + 2));
    if (!cuts) return 0.0;
    int n = 0;
    cuts[n++] = a;
    cuts[n++] = b;
    for (int i = 0; i < S.n_procs; i++) {
        const proc_t *p = &S.procs[i];
        if (p->from > a && p->from < b) cuts[n++] = p->from;
        if (p->to > a && p->to < b) cuts[n++] = p->to;
    }
    qsort(cuts, (size_t)n, sizeof(double), cmp_double);
    double total = 0.0;
    for (int i = 0; i + 1 < n; i++)
        if (cuts[i + 1] > cuts[i])
            total += instance_activity(g, gi, cuts[i]) * (cuts[i + 1] - cuts[i]);
    free(cuts);
    return total;
}

/* Prologue for calls on a MIG device handle: lock, handle check, injection under the parent's index. */
#define MIG_BEGIN(h, fname)                                                  \
    LOCKED_BEGIN();                                                          \
    if (!is_mig_handle(h)) RET(NVML_ERROR_INVALID_ARGUMENT);                 \
    const mock_mig_t *m = (const mock_mig_t *)(const void *)(h);             \
    if (m >= &S.migs[S.n_migs]) RET(NVML_ERROR_INVALID_ARGUMENT);            \
    long long t_us = now_us();                                               \
    double t = rel_s(t_us);                                                  \
    (void)t_us;                                                              \
    {                                                                        \
        nvmlReturn_t _e = injected(&S.gpus[m->gpu], (fname), t);             \
        if (_e != NVML_SUCCESS) RET(_e);                                     \
    }                                                                        \
    if (!mig_exists(m, t)) RET(NVML_ERROR_NOT_FOUND); /* re-partitioned away */

static nvmlReturn_t mig_get_uuid(nvmlDevice_t dev, char *uuid, unsigned int length) {
    MIG_BEGIN(dev, "nvmlDeviceGetUUID");
    RET(copy_str(uuid, length, m->uuid));
}

static nvmlReturn_t mig_running_processes(nvmlDevice_t dev, unsigned int *count, void *infos, int version) {
    MIG_BEGIN(dev, "nvmlDeviceGetComputeRunningProcesses");
    if (!count) RET(NVML_ERROR_INVALID_ARGUMENT);
    unsigned int n = 0;
    for (int i = 0; i < S.n_procs; i++) n += proc_on_mig(&S.procs[i], m, t);
    if (n == 0) {
        *count = 0;
        RET(NVML_SUCCESS);
    }
    if (!infos || *count < n) {
        *count = n;
        RET(NVML_ERROR_INSUFFICIENT_SIZE);
    }
    unsigned int k = 0;
    for (int i = 0; i < S.n_procs; i++) {
        const proc_t *p = &S.procs[i];
        if (!proc_on_mig(p, m, t)) continue;
        if (version == 1) {
            nvmlProcessInfo_v1_t *o = &((nvmlProcessInfo_v1_t *)infos)[k++];
            o->pid = p->pid;
            o->usedGpuMemory = p->used;
        } else {
            nvmlProcessInfo_v2_t *o = &((nvmlProcessInfo_v2_t *)infos)[k++];
            o->pid = p->pid;
            o->usedGpuMemory = p->used;
            o->gpuInstanceId = m->gi;
            o->computeInstanceId = m->ci;
        }
    }
    *count = n;
    RET(NVML_SUCCESS);
}

EXPORT nvmlReturn_t nvmlDeviceGetMigMode(nvmlDevice_t dev, unsigned int *current, unsigned int *pending) {
    DEV_BEGIN(dev, "nvmlDeviceGetMigMode");
    if (!current || !pending) RET(NVML_ERROR_INVALID_ARGUMENT);
    *current = *pending = dev->mig_mode ? NVML_DEVICE_MIG_ENABLE : NVML_DEVICE_MIG_DISABLE;
    RET(NVML_SUCCESS);
}

EXPORT nvmlReturn_t nvmlDeviceGetMaxMigDeviceCount(nvmlDevice_t dev, unsigned int *count) {
    DEV_BEGIN(dev, "nvmlDeviceGetMaxMigDeviceCount");
    if (!count) RET(NVML_ERROR_INVALID_ARGUMENT);
    *count = dev->mig_mode ? dev->mig_slots : 0;
    RET(NVML_SUCCESS);
}

/* The index-th MIG device that exists now, in scenario order. */
EXPORT nvmlReturn_t nvmlDeviceGetMigDeviceHandleByIndex(nvmlDevice_t dev, unsigned int index, nvmlDevice_t *mig) {
    DEV_BEGIN(dev, "nvmlDeviceGetMigDeviceHandleByIndex");
    if (!mig) RET(NVML_ERROR_INVALID_ARGUMENT);
    if (!dev->mig_mode) RET(NVML_ERROR_NOT_SUPPORTED);
    if (index >= dev->mig_slots) RET(NVML_ERROR_INVALID_ARGUMENT);
    unsigned int k = 0;
    for (int i = 0; i < S.n_migs; i++) {
        const mock_mig_t *m = &S.migs[i];
        if (m->gpu != dev->index || !mig_exists(m, t)) continue;
        if (k++ == index) {
            *mig = (nvmlDevice_t)(void *)&S.migs[i];
            RET(NVML_SUCCESS);
        }
    }
    RET(NVML_ERROR_NOT_FOUND);
}

EXPORT nvmlReturn_t nvmlDeviceIsMigDeviceHandle(nvmlDevice_t dev, unsigned int *is_mig) {
    LOCKED_BEGIN();
    if (!is_mig) RET(NVML_ERROR_INVALID_ARGUMENT);
    if (is_mig_handle(dev)) {
        *is_mig = 1;
        RET(NVML_SUCCESS);
    }
    if (!valid_device(dev)) RET(NVML_ERROR_INVALID_ARGUMENT);
    *is_mig = 0;
    RET(NVML_SUCCESS);
}

EXPORT nvmlReturn_t nvmlDeviceGetDeviceHandleFromMigDeviceHandle(nvmlDevice_t dev, nvmlDevice_t *parent) {
    MIG_BEGIN(dev, "nvmlDeviceGetDeviceHandleFromMigDeviceHandle");
    if (!parent) RET(NVML_ERROR_INVALID_ARGUMENT);
    *parent = &S.gpus[m->gpu];
    RET(NVML_SUCCESS);
}

EXPORT nvmlReturn_t nvmlDeviceGetGpuInstanceId(nvmlDevice_t dev, unsigned int *id) {
    if (!is_mig_handle(dev)) { /* a board handle is not a MIG device */
        LOCKED_BEGIN();
        RET(valid_device(dev) ? NVML_ERROR_NOT_SUPPORTED : NVML_ERROR_INVALID_ARGUMENT);
    }
    MIG_BEGIN(dev, "nvmlDeviceGetGpuInstanceId");
    if (!id) RET(NVML_ERROR_INVALID_ARGUMENT);
    *id = m->gi;
    RET(NVML_SUCCESS);
}

EXPORT nvmlReturn_t nvmlDeviceGetComputeInstanceId(nvmlDevice_t dev, unsigned int *id) {
    if (!is_mig_handle(dev)) {
        LOCKED_BEGIN();
        RET(valid_device(dev) ? NVML_ERROR_NOT_SUPPORTED : NVML_ERROR_INVALID_ARGUMENT);
    }
    MIG_BEGIN(dev, "nvmlDeviceGetComputeInstanceId");
    if (!id) RET(NVML_ERROR_INVALID_ARGUMENT);
    *id = m->ci;
    RET(NVML_SUCCESS);
}

/* Slice counts: a MIG device reports its own; the board reports all its slices. */
EXPORT nvmlReturn_t nvmlDeviceGetAttributes_v2(nvmlDevice_t dev, nvmlDeviceAttributes_t *attr) {
    if (is_mig_handle(dev)) {
        MIG_BEGIN(dev, "nvmlDeviceGetAttributes");
        if (!attr) RET(NVML_ERROR_INVALID_ARGUMENT);
        const mock_gpu_t *g = &S.gpus[m->gpu];
        memset(attr, 0, sizeof *attr);
        attr->multiprocessorCount = 16 * m->slices;
        attr->gpuInstanceSliceCount = m->slices;
        attr->computeInstanceSliceCount = m->slices;
        attr->memorySizeMB = (g->mem_total >> 20) * m->slices / (g->mig_slots + 1);
        RET(NVML_SUCCESS);
    }
    DEV_BEGIN(dev, "nvmlDeviceGetAttributes");
    if (!attr) RET(NVML_ERROR_INVALID_ARGUMENT);
    memset(attr, 0, sizeof *attr);
    attr->multiprocessorCount = 132;
    attr->gpuInstanceSliceCount = dev->mig_slots;
    attr->computeInstanceSliceCount = dev->mig_slots;
    attr->memorySizeMB = dev->mem_total >> 20;
    RET(NVML_SUCCESS);
}

EXPORT nvmlReturn_t nvmlDeviceGetAttributes(nvmlDevice_t dev, nvmlDeviceAttributes_t *attr) {
    return nvmlDeviceGetAttributes_v2(dev, attr);
}

EXPORT nvmlReturn_t nvmlGpmQueryDeviceSupport(nvmlDevice_t dev, nvmlGpmSupport_t *support) {
    DEV_BEGIN(dev, "nvmlGpmQueryDeviceSupport");
    if (!support) RET(NVML_ERROR_INVALID_ARGUMENT);
    if (support->version != NVML_GPM_SUPPORT_VERSION) RET(NVML_ERROR_ARGUMENT_VERSION_MISMATCH);
    support->isSupportedDevice = dev->gpm_supported ? 1 : 0;
    RET(NVML_SUCCESS);
}

EXPORT nvmlReturn_t nvmlGpmSampleAlloc(gpm_sample_t **sample) {
    if (!sample) return NVML_ERROR_INVALID_ARGUMENT;
    gpm_sample_t *s = calloc(1, sizeof *s);
    if (!s) return NVML_ERROR_UNKNOWN;
    s->magic = GPM_SAMPLE_MAGIC;
    *sample = s;
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlGpmSampleFree(gpm_sample_t *sample) {
    if (!sample || sample->magic != GPM_SAMPLE_MAGIC) return NVML_ERROR_INVALID_ARGUMENT;
    sample->magic = 0;
    free(sample);
    return NVML_SUCCESS;
}

static nvmlReturn_t gpm_take(const mock_gpu_t *dev, int gi, long long t_us, gpm_sample_t *sample) {
    if (!sample || sample->magic != GPM_SAMPLE_MAGIC) return NVML_ERROR_INVALID_ARGUMENT;
    if (!dev->gpm_supported) return NVML_ERROR_NOT_SUPPORTED;
    sample->dev = dev;
    sample->gi = gi;
    sample->t_us = t_us;
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlGpmSampleGet(nvmlDevice_t dev, gpm_sample_t *sample) {
    DEV_BEGIN(dev, "nvmlGpmSampleGet");
    RET(gpm_take(dev, -1, t_us, sample));
}

EXPORT nvmlReturn_t nvmlGpmMigSampleGet(nvmlDevice_t dev, unsigned int gpuInstanceId, gpm_sample_t *sample) {
    DEV_BEGIN(dev, "nvmlGpmMigSampleGet");
    if (!dev->mig_mode) RET(NVML_ERROR_NOT_SUPPORTED);
    int found = 0;
    for (int i = 0; i < S.n_migs; i++)
        found |= S.migs[i].gpu == dev->index && S.migs[i].gi == gpuInstanceId && mig_exists(&S.migs[i], t);
    if (!found) RET(NVML_ERROR_NOT_FOUND);
    RET(gpm_take(dev, (int)gpuInstanceId, t_us, sample));
}

EXPORT nvmlReturn_t nvmlGpmMetricsGet(gpm_metrics_get_t *mg) {
    static char sm_short[] = "sm_util", sm_long[] = "SM utilization", pct[] = "%";
    LOCKED_BEGIN();
    if (!mg) RET(NVML_ERROR_INVALID_ARGUMENT);
    if (mg->version != NVML_GPM_METRICS_GET_VERSION) RET(NVML_ERROR_ARGUMENT_VERSION_MISMATCH);
    const gpm_sample_t *a = mg->sample1, *b = mg->sample2;
    if (!a || !b || a->magic != GPM_SAMPLE_MAGIC || b->magic != GPM_SAMPLE_MAGIC || a->dev != b->dev ||
        a->gi != b->gi || !a->dev || b->t_us <= a->t_us || mg->numMetrics > GPM_MAX_METRICS)
        RET(NVML_ERROR_INVALID_ARGUMENT);
    double ta = rel_s(a->t_us), tb = rel_s(b->t_us);
    for (unsigned int i = 0; i < mg->numMetrics; i++) {
        gpm_metric_t *o = &mg->metrics[i];
        memset(&o->metricInfo, 0, sizeof o->metricInfo);
        o->value = 0.0;
        if (o->metricId != NVML_GPM_METRIC_SM_UTIL) {
            o->nvmlReturn = NVML_ERROR_NOT_SUPPORTED;
            continue;
        }
        o->nvmlReturn = NVML_SUCCESS;
        o->value = activity_integral(a->dev, a->gi, ta, tb) / (tb - ta);
        o->metricInfo.shortName = sm_short;
        o->metricInfo.longName = sm_long;
        o->metricInfo.unit = pct;
    }
    RET(NVML_SUCCESS);
}
