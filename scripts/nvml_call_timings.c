/*
 * Times the NVML calls the GPU collector makes, on GPU 0 of a real driver, and prints what the
 * driver returns for the process calls (entry layout, MIG instance IDs, utilization samples).
 * The per-call numbers in docs/gpu.md come from this program (run once with the GPU idle, once
 * with tests/fixtures/cuda_load running).
 *
 *   cc -O1 -o /tmp/nvml_call_timings scripts/nvml_call_timings.c -ldl && /tmp/nvml_call_timings
 */
#include <dlfcn.h>
#include <stdio.h>
#include <sys/time.h>
#include <time.h>

typedef struct { unsigned pid; unsigned long long mem; unsigned gi, ci; } proc_t;
typedef struct { unsigned pid; unsigned long long ts; unsigned sm, mem, enc, dec; } sample_t;
typedef struct { unsigned version; unsigned long long total, reserved, free, used; } memory_v2_t;
typedef int (*fn_t)();

static double mono_us(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

static unsigned long long wall_us(void) {
    struct timeval t;
    gettimeofday(&t, 0);
    return t.tv_sec * 1000000ull + t.tv_usec;
}

#define SYM(name) fn_t name = (fn_t)dlsym(lib, #name)
#define TIME(label, call)                                                  \
    do {                                                                   \
        double start = mono_us();                                          \
        for (int i = 0; i < N; i++) { call; }                              \
        printf("%-16s %9.2f us\n", label, (mono_us() - start) / N);        \
    } while (0)

int main(void) {
    const int N = 2000;
    void *lib = dlopen("libnvidia-ml.so.1", RTLD_NOW);
    if (!lib) { fprintf(stderr, "%s\n", dlerror()); return 2; }
    SYM(nvmlInit_v2); SYM(nvmlDeviceGetHandleByIndex_v2); SYM(nvmlDeviceGetUUID);
    SYM(nvmlDeviceGetUtilizationRates); SYM(nvmlDeviceGetMemoryInfo_v2); SYM(nvmlDeviceGetMigMode);
    SYM(nvmlDeviceGetComputeRunningProcesses_v3); SYM(nvmlDeviceGetGraphicsRunningProcesses_v3);
    SYM(nvmlDeviceGetProcessUtilization); SYM(nvmlDeviceGetMemoryInfo);
    printf("init %d, v1 memory symbol %s\n", nvmlInit_v2(), nvmlDeviceGetMemoryInfo ? "present" : "missing");
    void *dev;
    nvmlDeviceGetHandleByIndex_v2(0, &dev);

    proc_t procs[16];
    unsigned n = 16;
    int r = nvmlDeviceGetComputeRunningProcesses_v3(dev, &n, procs);
    printf("compute processes: return %d, %u\n", r, n);
    for (unsigned i = 0; i < n && i < 16 && r == 0; i++)
        printf("  pid %u mem %llu gi %x ci %x\n", procs[i].pid, procs[i].mem, procs[i].gi, procs[i].ci);
    static sample_t samples[1024];
    unsigned c = 1024;
    r = nvmlDeviceGetProcessUtilization(dev, samples, &c, wall_us() - 1000000);
    printf("process utilization (1 s back): return %d, %u\n", r, c);
    for (unsigned i = 0; i < c && i < 3 && r == 0; i++)
        printf("  pid %u ts %llu sm %u\n", samples[i].pid, samples[i].ts, samples[i].sm);
    c = 1024;
    r = nvmlDeviceGetProcessUtilization(dev, samples, &c, 0);
    printf("process utilization (from 0): return %d, %u\n", r, c);

    char uuid[96];
    unsigned u[2];
    memory_v2_t m;
    TIME("handle", nvmlDeviceGetHandleByIndex_v2(0, &dev));
    TIME("uuid", nvmlDeviceGetUUID(dev, uuid, 96));
    TIME("utilization", nvmlDeviceGetUtilizationRates(dev, u));
    TIME("memory_v2", (m.version = sizeof m | 2 << 24, nvmlDeviceGetMemoryInfo_v2(dev, &m)));
    TIME("mig_mode", nvmlDeviceGetMigMode(dev, u, u + 1));
    TIME("compute_procs", (n = 0, nvmlDeviceGetComputeRunningProcesses_v3(dev, &n, 0), n = 16,
                           nvmlDeviceGetComputeRunningProcesses_v3(dev, &n, procs)));
    TIME("graphics_procs", (n = 0, nvmlDeviceGetGraphicsRunningProcesses_v3(dev, &n, 0), n = 16,
                            nvmlDeviceGetGraphicsRunningProcesses_v3(dev, &n, procs)));
    TIME("process_util", (c = 0, nvmlDeviceGetProcessUtilization(dev, 0, &c, wall_us() - 500000),
                          c = 1024, nvmlDeviceGetProcessUtilization(dev, samples, &c, wall_us() - 500000)));
    return 0;
}
