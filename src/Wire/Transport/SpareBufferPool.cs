namespace P11Proxy.Wire.Transport;

/// <summary>A few large byte arrays kept for reuse, at most <c>limit</c> bytes in all; thread-safe.</summary>
public sealed class SpareBufferPool(long limit)
{
    private readonly List<byte[]> _buffers = [];
    private long _bytes;

    /// <summary>A kept buffer of at least <paramref name="minimumLength"/> bytes (the smallest such), or null.</summary>
    public byte[]? Take(int minimumLength)
    {
        lock (_buffers)
        {
            int best = -1;
            for (int i = 0; i < _buffers.Count; i++)
                if (_buffers[i].Length >= minimumLength && (best < 0 || _buffers[i].Length < _buffers[best].Length))
                    best = i;
            if (best < 0) return null;
            var buffer = _buffers[best];
            _buffers.RemoveAt(best);
            _bytes -= buffer.Length;
            return buffer;
        }
    }

    /// <summary>Keeps a buffer (already wiped by its user) if it fits; otherwise leaves it to the GC.</summary>
    public void Keep(byte[] buffer)
    {
        if (buffer.Length > RpcChannel.RetainedLimit) return;
        lock (_buffers)
        {
            if (_bytes + buffer.Length > limit) return;
            _buffers.Add(buffer);
            _bytes += buffer.Length;
        }
    }
}
