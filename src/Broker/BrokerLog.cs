using System.Text;

namespace P11Proxy.Broker;

/// <summary>
/// Log lines on stderr: "p11proxy-broker: LEVEL: message", or "p11proxy-broker worker PID: LEVEL:
/// message" from a worker process (workers share the listener's stderr). Call tracing with
/// --verbose names the call, slot or session, CK_RV and duration, never argument values (PINs,
/// data, keys).
/// </summary>
internal sealed class BrokerLog(bool verbose, bool quiet = false, string? source = null)
{
    private readonly string _prefix = source is null ? "p11proxy-broker" : $"p11proxy-broker {source}";

    private readonly object _gate = new();

    public bool Verbose { get; } = verbose;

    /// <summary>Informational lines are dropped when quiet (stdio mode shares the host's stderr).</summary>
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
        var line = Encoding.UTF8.GetBytes($"{_prefix}: {level}: {message}\n");
        lock (_gate)
        {
            try
            {
                using var stderr = Console.OpenStandardError();
                stderr.Write(line);
            }
            catch
            {
                // Losing a log line must never take the broker down.
            }
        }
    }
}
