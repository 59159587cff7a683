using System.Text;

namespace P11Proxy.Platform;

/// <summary>
/// The one log of both executables: lines on stderr, one write each, never interleaved and never
/// fatal. The broker writes "p11proxy-broker: LEVEL: message" ("p11proxy-broker worker PID: ..." from a
/// worker process, which shares the listener's stderr); the module, a guest in its host's stderr,
/// writes "p11proxy: message" without a level word, as hosts' users and our tests read it. Tracing
/// (--verbose, P11PROXY_DEBUG=1) names calls, slots, sessions, CK_RVs and durations, never argument
/// values: PINs, data and keys never reach a log line.
/// </summary>
public sealed class ProcessLog(string source, bool verbose, bool quiet = false, bool levelWords = true)
{
    private readonly object _gate = new();

    public bool Verbose { get; } = verbose;

    /// <summary>Informational lines are dropped when quiet (the broker's stdio mode shares the host's stderr).</summary>
    public void Info(string message)
    {
        if (!quiet || Verbose) Write("info", message);
    }

    public void Warn(string message) => Write("warning", message);

    public void Error(string message) => Write("error", message);

    public void Trace(string message)
    {
        if (Verbose) Write("trace", message);
    }

    private void Write(string level, string message)
    {
        var line = Encoding.UTF8.GetBytes(levelWords ? $"{source}: {level}: {message}\n" : $"{source}: {message}\n");
        lock (_gate)
        {
            try
            {
                using var stderr = Console.OpenStandardError();
                stderr.Write(line);
            }
            catch
            {
                // Losing a log line must never take the process (or the module's host) down.
            }
        }
    }
}
