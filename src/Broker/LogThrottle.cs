namespace P11Proxy.Broker;

/// <summary>
/// Log lines a flood of connections could repeat thousands of times a second (refused peers,
/// handshake timeouts, accept failures): per kind, the first few of each second are written and
/// the rest counted, then summed up in one line ("1,093 more lines like the above in the last second, the last of them: ...").
/// Nothing is dropped silently. Used by the listener's single thread only.
/// </summary>
internal sealed class LogThrottle(ProcessLog log, int perSecond = 5)
{
    private sealed class Kind(bool warning)
    {
        public readonly bool Warning = warning;
        public long WindowStart;
        public int Written;
        public int Suppressed;
        public string Last = "";
    }

    private readonly Dictionary<string, Kind> _kinds = new();

    public void Warn(string kind, string message) => Write(kind, message, warning: true);
    public void Info(string kind, string message) => Write(kind, message, warning: false);

    private void Write(string key, string message, bool warning)
    {
        long now = Environment.TickCount64;
        if (!_kinds.TryGetValue(key, out var kind))
            _kinds[key] = kind = new Kind(warning) { WindowStart = now };
        if (now - kind.WindowStart >= 1000)
        {
            Summarise(kind);
            kind.WindowStart = now;
            kind.Written = 0;
        }
        if (kind.Written < perSecond)
        {
            kind.Written++;
            if (warning) log.Warn(message); else log.Info(message);
            return;
        }
        kind.Suppressed++;
        kind.Last = message;
    }

    /// <summary>Writes the summaries of the seconds that have ended.</summary>
    public void Flush()
    {
        long now = Environment.TickCount64;
        foreach (var kind in _kinds.Values)
            if (kind.Suppressed > 0 && now - kind.WindowStart >= 1000)
            {
                Summarise(kind);
                kind.WindowStart = now;
                kind.Written = 0;
            }
    }

    /// <summary>When <see cref="Flush"/> next has something to write (TickCount64), or long.MaxValue.</summary>
    public long NextFlush
    {
        get
        {
            long next = long.MaxValue;
            foreach (var kind in _kinds.Values)
                if (kind.Suppressed > 0)
                    next = Math.Min(next, kind.WindowStart + 1000);
            return next;
        }
    }

    private void Summarise(Kind kind)
    {
        if (kind.Suppressed == 0) return;
        string line = $"{kind.Suppressed:N0} more lines like the above in the last second, the last of them: {kind.Last}";
        if (kind.Warning) log.Warn(line); else log.Info(line);
        kind.Suppressed = 0;
    }
}
