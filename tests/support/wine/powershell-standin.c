/*
 * A STAND-IN for powershell.exe, for the wine tests only (wine's own
 * powershell.exe is a stub that runs nothing). It is not PowerShell: it
 * reads the script the agent wrote and understands just enough of it to
 * prove what the agent did, and fails loudly on anything else:
 *
 *   - the arguments must be -NoProfile -NonInteractive <script>;
 *   - the script must start with a UTF-8 BOM and the agent's first line;
 *   - the command lines (between that line and the agent's trailer) may be
 *       Write-Output <text>          prints <text> and CRLF (text mode)
 *       Write-Output $env:<NAME>     prints the variable and CRLF
 *       $env:<NAME> = "<value>"      sets a variable (no escapes)
 *       Set-Location <dir>           changes directory
 *       Get-Location                 prints the current directory
 *       Start-Sleep <seconds>        sleeps
 *       exit <n>                     ends at once with n, no dump
 *     anything else prints "stand-in: unknown command" and ends with 99;
 *   - then, like the real trailer, it writes the dump named in the
 *     Set-Content line (BOM, Name=Value CRLF lines, with the exit status
 *     and the current directory) and exits 0.
 */
#include <windows.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char FIRST_LINE[] = "$ErrorActionPreference = \"STOP\"";
static const char TRAILER[] = "if ($LASTEXITCODE -eq $null)";
static const char SET_CONTENT[] = "Set-Content -LiteralPath '";

static int fail(const char *why)
{
    printf("stand-in: %s\n", why);
    fflush(stdout);
    return 99;
}

static char *utf8(const wchar_t *w)
{
    int n = WideCharToMultiByte(CP_UTF8, 0, w, -1, NULL, 0, NULL, NULL);
    char *s = malloc(n > 0 ? n : 1);
    if (n <= 0) {
        s[0] = 0;
        return s;
    }
    WideCharToMultiByte(CP_UTF8, 0, w, -1, s, n, NULL, NULL);
    return s;
}

static void set_var(const char *name, const char *value)
{
    wchar_t wname[256], wvalue[4096];
    MultiByteToWideChar(CP_UTF8, 0, name, -1, wname, 256);
    MultiByteToWideChar(CP_UTF8, 0, value, -1, wvalue, 4096);
    SetEnvironmentVariableW(wname, wvalue);
}

static void print_var(const char *name)
{
    wchar_t wname[256], wvalue[4096];
    MultiByteToWideChar(CP_UTF8, 0, name, -1, wname, 256);
    if (GetEnvironmentVariableW(wname, wvalue, 4096) == 0)
        wvalue[0] = 0;
    char *v = utf8(wvalue);
    printf("%s\n", v);
    free(v);
}

/* Runs one command line; returns -1 to go on, or an exit code. */
static int run_line(char *line)
{
    if (strncmp(line, "Write-Output $env:", 18) == 0) {
        print_var(line + 18);
    } else if (strncmp(line, "Write-Output ", 13) == 0) {
        printf("%s\n", line + 13);
    } else if (strncmp(line, "$env:", 5) == 0) {
        char *eq = strstr(line, " = \"");
        size_t len = strlen(line);
        if (!eq || line[len - 1] != '"')
            return fail("bad assignment");
        *eq = 0;
        line[len - 1] = 0;
        set_var(line + 5, eq + 4);
    } else if (strncmp(line, "Set-Location ", 13) == 0) {
        if (!SetCurrentDirectoryA(line + 13))
            return fail("Set-Location failed");
    } else if (strcmp(line, "Get-Location") == 0) {
        char cwd[MAX_PATH];
        GetCurrentDirectoryA(sizeof(cwd), cwd);
        printf("%s\n", cwd);
    } else if (strncmp(line, "Start-Sleep ", 12) == 0) {
        fflush(stdout);
        Sleep((DWORD)atoi(line + 12) * 1000);
    } else if (strncmp(line, "exit ", 5) == 0) {
        fflush(stdout);
        return atoi(line + 5);
    } else if (line[0] != 0) {
        return fail("unknown command");
    }
    fflush(stdout);
    return -1;
}

static int write_dump(const char *set_content_line)
{
    const char *start = strstr(set_content_line, SET_CONTENT);
    if (!start)
        return fail("no Set-Content line");
    start += strlen(SET_CONTENT);
    char path[MAX_PATH * 2];
    size_t n = 0;
    for (const char *p = start; *p && n < sizeof(path) - 1; p++) {
        if (*p == '\'') {
            if (p[1] != '\'')
                break;
            p++;
        }
        path[n++] = *p;
    }
    path[n] = 0;
    FILE *f = fopen(path, "wb");
    if (!f)
        return fail("cannot write the dump");
    fputs("\xEF\xBB\xBF", f);
    wchar_t *block = GetEnvironmentStringsW();
    for (wchar_t *v = block; *v; v += wcslen(v) + 1) {
        if (v[0] == L'=')
            continue; /* per-drive directories, not variables */
        char *s = utf8(v);
        fprintf(f, "%s\r\n", s);
        free(s);
    }
    FreeEnvironmentStringsW(block);
    char cwd[MAX_PATH];
    GetCurrentDirectoryA(sizeof(cwd), cwd);
    fprintf(f, "SEMAPHORE_AGENT_CURRENT_CMD_EXIT_STATUS=0\r\n");
    fprintf(f, "SEMAPHORE_AGENT_CURRENT_DIR=%s\r\n", cwd);
    fclose(f);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc != 4 || strcmp(argv[1], "-NoProfile") != 0 ||
        strcmp(argv[2], "-NonInteractive") != 0)
        return fail("expected -NoProfile -NonInteractive <script>");
    FILE *f = fopen(argv[3], "rb");
    if (!f)
        return fail("cannot open the script");
    static char text[1 << 20];
    size_t len = fread(text, 1, sizeof(text) - 1, f);
    fclose(f);
    text[len] = 0;
    if (strncmp(text, "\xEF\xBB\xBF", 3) != 0)
        return fail("the script has no UTF-8 BOM");
    char *line = text + 3;
    size_t first = strlen(FIRST_LINE);
    if (strncmp(line, FIRST_LINE, first) != 0 || line[first] != '\n')
        return fail("the script does not start with the agent's first line");
    line += first + 1;
    while (*line) {
        char *end = strchr(line, '\n');
        if (end)
            *end = 0;
        if (strncmp(line, TRAILER, strlen(TRAILER)) == 0) {
            /* The dump line is two lines further on. */
            char *next = end ? end + 1 : line + strlen(line);
            char *dump = strstr(next, SET_CONTENT);
            if (!dump)
                return fail("no Set-Content line after the trailer");
            char *dump_end = strchr(dump, '\n');
            if (dump_end)
                *dump_end = 0;
            return write_dump(dump);
        }
        int code = run_line(line);
        if (code >= 0)
            return code;
        if (!end)
            break;
        line = end + 1;
    }
    return fail("the script has no trailer");
}
