/*
 * A stand-in for bcryptprimitives.dll, for running semaphore-agent.exe under
 * wine 8 only (never shipped): Rust's std on Windows gets its random bytes
 * from ProcessPrng, which this wine does not provide. It forwards to
 * advapi32's RtlGenRandom (exported as SystemFunction036), which wine has.
 */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T length)
{
    while (length > 0) {
        ULONG part = length > 0x40000000 ? 0x40000000 : (ULONG)length;
        if (!SystemFunction036(data, part))
            return FALSE;
        data += part;
        length -= part;
    }
    return TRUE;
}
