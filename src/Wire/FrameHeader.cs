using System.Buffers.Binary;

namespace P11Proxy.Wire;

/// <summary>
/// The transport frame of p11-kit's rpc-transport.c: call code, options length and body length,
/// 32 bits each, big-endian, followed by the options bytes (ignored by servers) and the body.
/// The call code tags a request; the reply carries the same code, so replies can be matched
/// to requests even when a server answers them out of order.
/// </summary>
public readonly record struct FrameHeader(uint Code, uint OptionsLength, uint BodyLength)
{
    public const int Size = 12;

    public void Write(Span<byte> destination)
    {
        BinaryPrimitives.WriteUInt32BigEndian(destination, Code);
        BinaryPrimitives.WriteUInt32BigEndian(destination[4..], OptionsLength);
        BinaryPrimitives.WriteUInt32BigEndian(destination[8..], BodyLength);
    }

    public static FrameHeader Read(ReadOnlySpan<byte> source) => new(
        BinaryPrimitives.ReadUInt32BigEndian(source),
        BinaryPrimitives.ReadUInt32BigEndian(source[4..]),
        BinaryPrimitives.ReadUInt32BigEndian(source[8..]));
}

/// <summary>Upper bounds applied to frames from an untrusted peer before anything is allocated.</summary>
public sealed record FrameLimits(uint MaxBodyLength, uint MaxOptionsLength)
{
    /// <summary>64 MiB bodies cover multi-megabyte digests and large certificate stores.</summary>
    public static readonly FrameLimits Default = new(64u << 20, 4096);

    /// <summary>Why a header is refused, or null when it is acceptable.</summary>
    public string? Check(in FrameHeader header)
    {
        if (header.Code == 0)
            return "frame with call code 0 (not a p11-kit RPC peer?)";
        if (header.OptionsLength > MaxOptionsLength)
            return $"frame options of {header.OptionsLength} bytes exceed the limit of {MaxOptionsLength}";
        if (header.BodyLength > MaxBodyLength)
            return $"frame body of {header.BodyLength} bytes exceeds the limit of {MaxBodyLength}";
        return null;
    }
}
