using System.Buffers.Binary;

namespace P11Proxy.Fuzz;

/// <summary>
/// Byte-level mutations of a seed body, driven by one seeded <see cref="Random"/> per input, so
/// input N of seed S is the same bytes on every run whatever else ran before it.
/// </summary>
public static class Mutator
{
    private static readonly byte[] InterestingBytes = [0x00, 0xff, 0x7f, 0x80, 0x01, 0xfe];

    private static readonly uint[] InterestingU32 =
    [
        0, 1, 2, 4, 8, 0x7f, 0x80, 0xff, 0x100, 0xffff, 0x10000,
        0x7ffffffe, 0x7fffffff, 0x80000000, 0xfffffffe, 0xffffffff,
    ];

    private const int MaxBody = 2 << 20;

    /// <summary>Applies 1 to 4 stacked mutations (10% of inputs go out unmutated). Returns a description.</summary>
    public static byte[] Mutate(Random rng, byte[] seed, IReadOnlyList<SeedInput> corpus, List<string> log)
    {
        if (rng.Next(10) == 0)
        {
            log.Add("unmutated");
            return seed;
        }
        var data = new List<byte>(seed);
        int count = 1 + (rng.Next(8) switch { < 4 => 0, < 6 => 1, 6 => 2, _ => 3 });
        for (int m = 0; m < count; m++)
            MutateOnce(rng, data, corpus, log);
        return data.ToArray();
    }

    private static void MutateOnce(Random rng, List<byte> data, IReadOnlyList<SeedInput> corpus, List<string> log)
    {
        int kind = rng.Next(9);
        if (data.Count == 0 && kind is not (6 or 7)) kind = 7;
        switch (kind)
        {
            case 0: // bit flip
            {
                int at = rng.Next(data.Count);
                int bit = rng.Next(8);
                data[at] ^= (byte)(1 << bit);
                log.Add($"flip bit {bit} at {at}");
                break;
            }
            case 1: // byte replaced with an interesting value
            {
                int at = rng.Next(data.Count);
                byte value = InterestingBytes[rng.Next(InterestingBytes.Length)];
                data[at] = value;
                log.Add($"byte {at} = 0x{value:x2}");
                break;
            }
            case 2: // u32 field set to a boundary value: mostly at a field boundary seen from the body start
            case 3:
            {
                if (data.Count < 4) goto case 0;
                int at = rng.Next(3) == 0 ? rng.Next(data.Count - 3) : FieldOffset(rng, data.Count);
                uint value = rng.Next(5) == 0
                    ? (uint)(data.Count - at - 4 + rng.Next(-1, 2)) // the bytes that follow, +-1
                    : InterestingU32[rng.Next(InterestingU32.Length)];
                Span<byte> bytes = stackalloc byte[4];
                BinaryPrimitives.WriteUInt32BigEndian(bytes, value);
                for (int i = 0; i < 4; i++) data[at + i] = bytes[i];
                log.Add($"u32 at {at} = 0x{value:x}");
                break;
            }
            case 4: // truncation
            {
                int length = rng.Next(data.Count);
                data.RemoveRange(length, data.Count - length);
                log.Add($"truncate to {length}");
                break;
            }
            case 5: // duplicate a region
            {
                int start = rng.Next(data.Count);
                int length = 1 + rng.Next(Math.Min(64, data.Count - start));
                if (rng.Next(16) == 0) length = data.Count - start; // sometimes the whole tail
                int to = rng.Next(data.Count + 1);
                if (data.Count + length > MaxBody) break;
                data.InsertRange(to, data.GetRange(start, length));
                log.Add($"duplicate {start}+{length} at {to}");
                break;
            }
            case 6: // insert random bytes
            {
                int to = rng.Next(data.Count + 1);
                int length = 1 + rng.Next(rng.Next(4) == 0 ? 64 : 8);
                var bytes = new byte[length];
                rng.NextBytes(bytes);
                data.InsertRange(to, bytes);
                log.Add($"insert {length} random bytes at {to}");
                break;
            }
            case 7: // splice: our head with another input's tail
            {
                var other = corpus[rng.Next(corpus.Count)].Body;
                int cut = data.Count == 0 ? 0 : rng.Next(data.Count + 1);
                int from = other.Length == 0 ? 0 : rng.Next(other.Length + 1);
                if (cut + other.Length - from > MaxBody) break;
                data.RemoveRange(cut, data.Count - cut);
                data.AddRange(other.AsSpan(from).ToArray());
                log.Add($"splice at {cut} with another input from {from}");
                break;
            }
            default: // u64 field (ulong argument) set to a boundary value
            {
                if (data.Count < 8) goto case 1;
                int at = FieldOffset(rng, data.Count - 4);
                ulong value = (rng.Next(6)) switch
                {
                    0 => 0, 1 => ulong.MaxValue, 2 => 0x8000000000000000, 3 => 0xffffffff, 4 => 0x1_0000_0000,
                    _ => (ulong)rng.Next(0, 0x1000),
                };
                Span<byte> bytes = stackalloc byte[8];
                BinaryPrimitives.WriteUInt64BigEndian(bytes, value);
                for (int i = 0; i < 8; i++) data[at + i] = bytes[i];
                log.Add($"u64 at {at} = 0x{value:x}");
                break;
            }
        }
    }

    /// <summary>An offset where a length/count field plausibly starts (the signature length sits at 4).</summary>
    private static int FieldOffset(Random rng, int count)
    {
        int limit = count - 3;
        if (limit <= 0) return 0;
        return rng.Next(4) switch
        {
            0 => Math.Min(4, limit - 1),
            _ => rng.Next(limit),
        };
    }

    /// <summary>Rarely, a lie in the frame header instead of (or besides) the body.</summary>
    public static FrameSpec? MutateFrame(Random rng, int bodyLength, List<string> log)
    {
        if (rng.Next(40) != 0)
            return null;
        var spec = new FrameSpec();
        switch (rng.Next(6))
        {
            case 0: spec.Code = 0; break;
            case 1: spec.AnnouncedBody = InterestingU32[rng.Next(InterestingU32.Length)]; break;
            case 2: spec.AnnouncedBody = (uint)Math.Max(0, bodyLength + rng.Next(-3, 4)); break;
            case 3: spec.OptionsLength = InterestingU32[rng.Next(InterestingU32.Length)]; break;
            case 4: spec.OptionsLength = spec.OptionsSent.Equals(0) ? 8u : 0; spec.OptionsSent = 8; break;
            default: spec.Code = InterestingU32[rng.Next(InterestingU32.Length)]; break;
        }
        // A header announcing more than follows would leave the broker waiting: end the stream instead.
        long announced = (long)(spec.AnnouncedBody ?? (uint)bodyLength) + spec.OptionsLength;
        if (announced > bodyLength + spec.OptionsSent)
            spec.ShutdownAfterSend = true;
        log.Add("frame " + spec);
        return spec;
    }
}
