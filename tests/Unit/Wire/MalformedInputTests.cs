using System.Diagnostics;
using P11Proxy.Wire;
using static P11Proxy.Pkcs11.Pkcs11Constants;

namespace P11Proxy.UnitTests.Wire;

/// <summary>Hostile and broken input is refused with a status or false, never with an exception.</summary>
[TestFixture]
public class MalformedInputTests
{
    private static readonly int[] Versions = [0, 1, 2];

    private static IEnumerable<Golden.Frame> Samples()
    {
        // The biggest message of each call and direction in the capture: attribute arrays, mechanisms, strings.
        return Golden.All024()
            .GroupBy(f => (f.Kind, Id: f.Body[3]))
            .Select(g => g.MaxBy(f => f.Body.Length)!)
            .OrderByDescending(f => f.Body.Length)
            .Take(12);
    }

    public static IEnumerable<TestCaseData> TruncationSamples() =>
        Samples().Select(f => new TestCaseData(f.File, f.Line).SetName($"Truncated({f})"));

    [TestCaseSource(nameof(TruncationSamples))]
    public void TruncationAtEveryByteIsRefused(string file, int line)
    {
        var frame = Golden.Load(Golden.Directory024, file).Single(f => f.Line == line);
        var reader = new RpcMessageReader(WireProfile.V0);
        Assert.That(reader.Parse(frame.Body, frame.Kind), Is.EqualTo(ParseStatus.Ok));
        Assert.That(WireValues.TryDecode(reader, frame.Kind, out _), Is.True);
        for (int length = 0; length < frame.Body.Length; length++)
        {
            var status = reader.Parse(frame.Body.AsMemory(0, length), frame.Kind);
            if (status == ParseStatus.Ok)
                Assert.That(WireValues.TryDecode(reader, frame.Kind, out _), Is.False, $"accepted {length} of {frame.Body.Length} bytes");
            else
                Assert.That(status, Is.EqualTo(ParseStatus.Truncated), $"{length} bytes");
        }
    }

    private static bool Accepts(WireProfile profile, byte[] body, MessageKind kind) => W.TryParseAndDecode(profile, body, kind);

    [TestCase(0x7fffffffu)]
    [TestCase(0x7ffffffeu)]
    [TestCase(0xfffffffeu)]
    [TestCase(0x80000000u)]
    [TestCase(0x00010000u)]
    public void OversizedByteArrayLengthsAreRefused(uint length)
    {
        foreach (var version in Versions)
        {
            var profile = WireProfile.For((byte)version);
            // 'ay' in C_SignUpdate
            Assert.That(Accepts(profile, W.Body((uint)RpcCallId.C_SignUpdate, "uay", W.U64(1), [1], W.U32(length), [1, 2, 3]), MessageKind.Request), Is.False);
            // 'z' in C_InitToken
            Assert.That(Accepts(profile, W.Body((uint)RpcCallId.C_InitToken, "uayz", W.U64(1), [1], W.U32(0), W.U32(length)), MessageKind.Request), Is.False);
            // an attribute value
            Assert.That(Accepts(profile, W.Body((uint)RpcCallId.C_CreateObject, "uaA", W.U64(1), W.U32(1),
                W.U32((uint)CKA_VALUE), [1], W.U32(length), W.U32(length), [0]), MessageKind.Request), Is.False);
            // a mechanism parameter
            var mechanism = version == 2
                ? [.. W.U32((uint)CKM_RSA_PKCS_OAEP), 1, .. W.U64(1), .. W.U64(1), .. W.U64(1), .. W.U32(length)]
                : (byte[])[.. W.U32((uint)CKM_RSA_PKCS_OAEP), .. W.U64(1), .. W.U64(1), .. W.U64(1), .. W.U32(length)];
            Assert.That(Accepts(profile, W.Body((uint)RpcCallId.C_DecryptInit, "uMu", W.U64(1), mechanism, W.U64(2)), MessageKind.Request), Is.False);
            // the signature itself
            Assert.That(new RpcMessageReader(profile).Parse((byte[])[.. W.U32(1), .. W.U32(length), 0x61], MessageKind.Request), Is.EqualTo(ParseStatus.Truncated));
        }
    }

    [Test]
    public void OversizedCountsAreRefusedWithoutAllocating()
    {
        var before = GC.GetAllocatedBytesForCurrentThread();
        foreach (var version in Versions)
        {
            var profile = WireProfile.For((byte)version);
            foreach (uint count in new[] { 0xffffffffu, 0x7fffffffu, 0x10000000u })
            {
                Assert.That(Accepts(profile, W.Body((uint)RpcCallId.C_CreateObject, "uaA", W.U64(1), W.U32(count), W.U32(0), [0]), MessageKind.Request), Is.False);
                Assert.That(Accepts(profile, W.Body((uint)RpcCallId.C_GetAttributeValue, "uufA", W.U64(1), W.U64(2), W.U32(count), W.U32(0), W.U32(8)), MessageKind.Request), Is.False);
                Assert.That(Accepts(profile, W.Body((uint)RpcCallId.C_GetSlotList, "au", [1], W.U32(count), W.U64(1)), MessageKind.Response), Is.False);
                Assert.That(Accepts(profile, W.Body((uint)RpcCallId.C_CreateObject, "uaA", W.U64(1), W.U32(1),
                    W.U32((uint)CKA_ALLOWED_MECHANISMS), [1], W.U32(8), W.U32(count), W.U64(1)), MessageKind.Request), Is.False);
                Assert.That(Accepts(profile, W.Body((uint)RpcCallId.C_CreateObject, "uaA", W.U64(1), W.U32(1),
                    W.U32((uint)CKA_WRAP_TEMPLATE), [1], W.U32(24), W.U32(count), W.U32(0), [0]), MessageKind.Request), Is.False);
            }
            // A count without data ('au' absent) is only a number and fine.
            Assert.That(Accepts(profile, W.Body((uint)RpcCallId.C_GetSlotList, "au", [0], W.U32(0xffffffff)), MessageKind.Response), Is.True);
        }
        Assert.That(GC.GetAllocatedBytesForCurrentThread() - before, Is.LessThan(16 << 20), "no allocation sized by a peer's count");
    }

    [TestCase("uayf")]
    [TestCase("uayfyy")]
    [TestCase("uayfu")]
    [TestCase("")]
    [TestCase("UAYFY")]
    public void BadSignaturesAreRefused(string signature)
    {
        var body = W.Body((uint)RpcCallId.C_Sign, signature, W.U64(1), [1], W.U32(0), W.U32(0));
        Assert.That(new RpcMessageReader(WireProfile.V2).Parse(body, MessageKind.Request), Is.EqualTo(ParseStatus.BadSignature));
    }

    [Test]
    public void NullOrMissingSignatureIsTruncated()
    {
        var reader = new RpcMessageReader(WireProfile.V2);
        Assert.That(reader.Parse((byte[])[.. W.U32(2), .. W.U32(0xffffffff)], MessageKind.Request), Is.EqualTo(ParseStatus.Truncated));
        Assert.That(reader.Parse(W.U32(2), MessageKind.Request), Is.EqualTo(ParseStatus.Truncated));
        Assert.That(reader.Parse(Array.Empty<byte>(), MessageKind.Request), Is.EqualTo(ParseStatus.Truncated));
        Assert.That(reader.Parse(new byte[] { 0, 0, 0 }, MessageKind.Response), Is.EqualTo(ParseStatus.Truncated));
        Assert.That(reader.Call, Is.Null);
    }

    [TestCase(90u)]
    [TestCase(94u)]
    [TestCase(0x7fffffffu)]
    [TestCase(0xffffffffu)]
    public void UnknownCallIdsAreRefused(uint id)
    {
        foreach (var kind in new[] { MessageKind.Request, MessageKind.Response })
            Assert.That(new RpcMessageReader(WireProfile.V2).Parse(W.Body(id, "u", W.U64(0)), kind), Is.EqualTo(ParseStatus.UnknownCall));
    }

    [Test]
    public void ErrorCallIsNotARequest()
    {
        var reader = new RpcMessageReader(WireProfile.V0);
        Assert.That(reader.Parse(W.Body(0, "u", W.U64(5)), MessageKind.Request), Is.EqualTo(ParseStatus.ErrorCallAsRequest));
        Assert.That(reader.Parse(W.Body(0, "", W.U64(5)), MessageKind.Request), Is.EqualTo(ParseStatus.ErrorCallAsRequest));
        Assert.That(reader.Parse(W.Body(0, "u", W.U64(5)), MessageKind.Response), Is.EqualTo(ParseStatus.Ok));
        Assert.That(reader.Parse(W.Body(0, "u", [0, 0, 0]), MessageKind.Response), Is.EqualTo(ParseStatus.Truncated));
    }

    private static byte[] NestedTemplates(int depth)
    {
        // depth nested CKA_WRAP_TEMPLATE attributes, each holding one more, then a flat attribute.
        var one = (byte[])[.. W.U32((uint)CKA_WRAP_TEMPLATE), 1, .. W.U32(24), .. W.U32(1)];
        var body = new byte[8 + 4 + one.Length * depth + 10];
        int offset = 0;
        W.U64(1).CopyTo(body, offset); offset += 8;
        W.U32(1).CopyTo(body, offset); offset += 4;
        for (int i = 0; i < depth; i++) { one.CopyTo(body, offset); offset += one.Length; }
        ((byte[])[.. W.U32((uint)CKA_TOKEN), 1, .. W.U32(1), 1]).CopyTo(body, offset);
        return W.Body((uint)RpcCallId.C_CreateObject, "uaA", body);
    }

    [Test]
    public void TemplatesNestedUpTo8DeepAreAccepted()
    {
        for (int depth = 0; depth <= AttributeCodec.MaxDepth; depth++)
            Assert.That(Accepts(WireProfile.V2, NestedTemplates(depth), MessageKind.Request), Is.True, $"depth {depth}");
    }

    [TestCase(9)]
    [TestCase(10)]
    [TestCase(1000)]
    [TestCase(1_000_000)]
    public void DeeplyNestedTemplatesAreRefusedQuickly(int depth)
    {
        var body = NestedTemplates(depth);
        var watch = Stopwatch.StartNew();
        foreach (var profile in W.Profiles)
            Assert.That(Accepts(profile, body, MessageKind.Request), Is.False);
        Assert.That(watch.Elapsed, Is.LessThan(TimeSpan.FromSeconds(1)));
    }

    private static byte[] NestedBuffers(int depth)
    {
        var one = (byte[])[.. W.U32((uint)CKA_WRAP_TEMPLATE), .. W.U32(24), .. W.U32(1)];
        var body = new byte[16 + 4 + one.Length * depth + 8];
        int offset = 0;
        W.U64(1).CopyTo(body, offset); offset += 8;
        W.U64(2).CopyTo(body, offset); offset += 8;
        W.U32(1).CopyTo(body, offset); offset += 4;
        for (int i = 0; i < depth; i++) { one.CopyTo(body, offset); offset += one.Length; }
        ((byte[])[.. W.U32((uint)CKA_CLASS), .. W.U32(8)]).CopyTo(body, offset);
        return W.Body((uint)RpcCallId.C_GetAttributeValue, "uufA", body);
    }

    [TestCase(1, true)]
    [TestCase(8, true)]
    [TestCase(9, false)]
    [TestCase(1_000_000, false)]
    public void NestedAttributeBuffersAreBounded(int depth, bool accepted)
    {
        var watch = Stopwatch.StartNew();
        Assert.That(Accepts(WireProfile.V2, NestedBuffers(depth), MessageKind.Request), Is.EqualTo(accepted));
        Assert.That(watch.Elapsed, Is.LessThan(TimeSpan.FromSeconds(1)));
    }

    [Test]
    public void AttributeValueLongerThanItsLengthIsRefused()
    {
        // ulValueLen 2 but a 3-byte value: p11-kit refuses (length < decoded length).
        var body = W.Body((uint)RpcCallId.C_CreateObject, "uaA", W.U64(1), W.U32(1), W.U32((uint)CKA_LABEL), [1], W.U32(2), W.U32(3), [1, 2, 3]);
        Assert.That(Accepts(WireProfile.V2, body, MessageKind.Request), Is.False);
        // A date that is neither empty nor 8 bytes.
        body = W.Body((uint)RpcCallId.C_CreateObject, "uaA", W.U64(1), W.U32(1), W.U32((uint)CKA_START_DATE), [1], W.U32(8), W.U32(4), [1, 2, 3, 4]);
        Assert.That(Accepts(WireProfile.V2, body, MessageKind.Request), Is.False);
        // A template announcing less room than its attributes need.
        body = W.Body((uint)RpcCallId.C_CreateObject, "uaA", W.U64(1), W.U32(1), W.U32((uint)CKA_WRAP_TEMPLATE), [1], W.U32(23), W.U32(1),
            W.U32((uint)CKA_TOKEN), [0]);
        Assert.That(Accepts(WireProfile.V2, body, MessageKind.Request), Is.False);
    }

    [Test]
    public void RandomBitFlipsNeverThrow()
    {
        var frames = Golden.All024();
        var random = new Random(20240601);
        int accepted = 0, refused = 0;
        for (int i = 0; i < 20_000; i++)
        {
            var frame = frames[random.Next(frames.Count)];
            var body = (byte[])frame.Body.Clone();
            int flips = 1 + random.Next(4);
            for (int f = 0; f < flips; f++)
            {
                int bit = random.Next(body.Length * 8);
                body[bit / 8] ^= (byte)(1 << (bit % 8));
            }
            if (random.Next(8) == 0)
                Array.Resize(ref body, random.Next(body.Length + 1));
            var profile = W.Profiles[random.Next(3)];
            var kind = random.Next(4) == 0 ? (MessageKind)(3 - (int)frame.Kind) : frame.Kind;
            try
            {
                if (W.TryParseAndDecode(profile, body, kind)) accepted++;
                else refused++;
            }
            catch (Exception e)
            {
                Assert.Fail($"mutation {i} of {frame} threw {e.GetType().Name}: {e.Message}\n{W.ToHex(body)}");
            }
        }
        Assert.That(accepted + refused, Is.EqualTo(20_000));
        Assert.That(refused, Is.GreaterThan(0));
    }

    [Test]
    public void RandomBytesNeverThrow()
    {
        var random = new Random(7);
        for (int i = 0; i < 20_000; i++)
        {
            // A valid call id and signature followed by noise reaches the value readers.
            var call = CallTable.All[1 + random.Next(CallTable.Count - 1)];
            var kind = random.Next(2) == 0 ? MessageKind.Request : MessageKind.Response;
            var noise = new byte[random.Next(64)];
            random.NextBytes(noise);
            var body = W.Body((uint)call.Id, call.SignatureFor(kind), noise);
            Assert.DoesNotThrow(() => W.TryParseAndDecode(W.Profiles[random.Next(3)], body, kind), W.ToHex(body));
        }
    }

    [Test]
    public void FrameLimitsRefuseBigFrames()
    {
        var limits = FrameLimits.Default;
        Assert.That(limits.Check(new FrameHeader(1, 0, 100)), Is.Null);
        Assert.That(limits.Check(new FrameHeader(1, 4096, limits.MaxBodyLength)), Is.Null);
        Assert.That(limits.Check(new FrameHeader(1, 0, limits.MaxBodyLength + 1)), Does.Contain("exceeds"));
        Assert.That(limits.Check(new FrameHeader(1, 0, 0xffffffff)), Is.Not.Null);
        Assert.That(limits.Check(new FrameHeader(1, 4097, 10)), Is.Not.Null);
        Assert.That(limits.Check(new FrameHeader(1, 0xffffffff, 10)), Is.Not.Null);
        Assert.That(limits.Check(new FrameHeader(0, 0, 10)), Is.Not.Null);
        var small = new FrameLimits(1024, 0);
        Assert.That(small.Check(new FrameHeader(7, 0, 1024)), Is.Null);
        Assert.That(small.Check(new FrameHeader(7, 0, 1025)), Is.Not.Null);
        Assert.That(small.Check(new FrameHeader(7, 1, 10)), Is.Not.Null);
    }

    [Test]
    public void FrameHeaderIsBigEndian()
    {
        Span<byte> bytes = stackalloc byte[FrameHeader.Size];
        new FrameHeader(0x01020304, 5, 0xa0b0c0d0).Write(bytes);
        Assert.That(W.ToHex(bytes), Is.EqualTo("01020304" + "00000005" + "a0b0c0d0"));
        Assert.That(FrameHeader.Read(bytes), Is.EqualTo(new FrameHeader(0x01020304, 5, 0xa0b0c0d0)));
    }

    [Test]
    public void WriterRefusesArraysP11KitRefuses()
    {
        using var writer = new WireWriter();
        Assert.That(WireWriter.MaxArrayLength, Is.EqualTo(0x7ffffffeu));
        writer.WriteByteArray(new byte[10]);
        Assert.That(writer.Failed, Is.False);
        // Attribute types and lengths must fit 32 bits.
        Assert.That(AttributeCodec.WriteFlat(writer, WireProfile.V2, 0x1_0000_0000UL, 0, default, true), Is.False);
        Assert.That(writer.Failed, Is.True);
        writer.Reset();
        Assert.That(AttributeCodec.WriteFlat(writer, WireProfile.V2, CKA_TOKEN, 2, new byte[2], false), Is.False, "CK_BBOOL of 2 bytes");
        writer.Reset();
        Assert.That(AttributeCodec.WriteFlat(writer, WireProfile.V2, CKA_START_DATE, 7, new byte[7], false), Is.False, "date of 7 bytes");
    }
}
