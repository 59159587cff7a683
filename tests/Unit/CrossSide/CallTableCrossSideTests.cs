using System.Runtime.InteropServices;
using System.Text;
using P11Proxy.Pkcs11;
using P11Proxy.Wire;
using P11Proxy.Wire.Edge;
using static P11Proxy.Pkcs11.Pkcs11Constants;

namespace P11Proxy.UnitTests.CrossSide;

/// <summary>
/// Generated from the call table: for every row (and protocol version that knows it), each
/// request is encoded with the module's edge code (<see cref="CallerArguments"/>,
/// <see cref="MechanismMarshal"/>) from C memory and decoded with the broker's
/// (<see cref="RpcMessageReader"/>, <see cref="BackendArguments"/>, <see cref="MechanismNative"/>)
/// into backend memory; each reply the other way round (broker encodes what a backend wrote, the
/// module decodes into the caller's memory). Every part of the signature takes its edge values in
/// turn (NULL and zero-length buffers, size queries, empty and nested templates, 0xffffffff
/// lengths, mechanisms under encodings 0/1/2), and what arrives must mean what was sent.
/// </summary>
public sealed unsafe class CallTableCrossSideTests
{
    public static IEnumerable<TestCaseData> Rows()
    {
        foreach (var call in CallTable.All)
        {
            if (call.Id == RpcCallId.Error) continue;
            foreach (var profile in new[] { WireProfile.V0, WireProfile.V1, WireProfile.V2 })
                if (profile.Knows(call))
                    yield return new TestCaseData(call.Id, profile.Version).SetName($"{call.Name} v{profile.Version}");
        }
    }

    /// <summary>Each part's edge values are visited in turn; a row takes as many messages as its richest part has values.</summary>
    private const int Rounds = 6;

    [TestCaseSource(nameof(Rows))]
    public void RequestsMeanOnTheBrokerWhatTheModuleSent(RpcCallId id, byte version)
    {
        var call = CallTable.Get(id);
        var profile = WireProfile.For(version);
        using var memory = new CMemory();
        for (int round = 0; round < Rounds; round++)
        {
            using var request = new RpcMessageWriter(profile);
            request.Begin(call, MessageKind.Request, typedForm: false);
            var parts = call.PartsFor(MessageKind.Request, typed: false);
            var checks = new List<Action<RpcMessageReader, BackendArguments>>();
            for (int i = 0; i < parts.Length; i++)
                checks.Add(EncodeRequestPart(parts[i], round + i, request, profile, memory, $"{call.Name} v{version} part {i} round {round}"));
            Assert.That(request.Complete, Is.True, $"{call.Name}: the module's request is whole");

            var reader = new RpcMessageReader(profile);
            Assert.That(reader.Parse(request.Writer.Body.ToArray(), MessageKind.Request), Is.EqualTo(ParseStatus.Ok), call.Name);
            using var arena = new NativeArena();
            using var reply = new RpcMessageWriter(profile);
            var broker = new BackendArguments(reader, reply, arena);
            foreach (var check in checks) check(reader, broker);
            Assert.That(reader.Complete, Is.True, $"{call.Name} v{version} round {round}: the broker read the whole request");
        }
    }

    [TestCaseSource(nameof(Rows))]
    public void RepliesMeanInTheModuleWhatTheBrokerSent(RpcCallId id, byte version)
    {
        var call = CallTable.Get(id);
        var profile = WireProfile.For(version);
        using var memory = new CMemory();
        for (int round = 0; round < Rounds; round++)
        {
            using var arena = new NativeArena();
            using var reply = new RpcMessageWriter(profile);
            var broker = new BackendArguments(new RpcMessageReader(profile), reply, arena);
            reply.Begin(call, MessageKind.Response, typedForm: false);
            var parts = call.PartsFor(MessageKind.Response, typed: false);
            var checks = new List<Action<RpcMessageReader>>();
            for (int i = 0; i < parts.Length; i++)
            {
                // C_GetAttributeValue's "aAu": the template and the call's CK_RV are read together.
                bool withRv = parts[i] == WireType.AttributeArray && i + 1 < parts.Length && parts[i + 1] == WireType.ULong;
                checks.Add(EncodeReplyPart(parts[i], round + i, reply, broker, profile, memory, withRv, $"{call.Name} v{version} part {i} round {round}"));
                if (withRv) i++;
            }
            Assert.That(reply.Complete, Is.True, $"{call.Name}: the broker's reply is whole");

            var reader = new RpcMessageReader(profile);
            Assert.That(reader.Parse(reply.Writer.Body.ToArray(), MessageKind.Response), Is.EqualTo(ParseStatus.Ok), call.Name);
            foreach (var check in checks) check(reader);
            Assert.That(reader.Complete, Is.True, $"{call.Name} v{version} round {round}: the module read the whole reply");
        }
    }

    // ---- request parts: the module writes from C memory, the broker reads into backend memory ------------

    private static Action<RpcMessageReader, BackendArguments> EncodeRequestPart(WireType type, int round, RpcMessageWriter request,
        WireProfile profile, CMemory memory, string where)
    {
        switch (type)
        {
            case WireType.Byte:
            {
                byte value = (byte)(round % 2);
                request.WriteByte(value);
                return (r, _) => Assert.That(r.TryReadByte(out byte got) && got == value, Is.True, where);
            }
            case WireType.ULong:
            {
                ulong value = (round % 4) switch { 0 => 0, 1 => 1, 2 => 0xffffffffUL, _ => ulong.MaxValue };
                request.WriteULong(value);
                return (r, _) => Assert.That(r.TryReadULong(out ulong got) ? got : 0xdead, Is.EqualTo(value), where);
            }
            case WireType.ZeroString:
            {
                var label = Encoding.ASCII.GetBytes("label".PadRight(32));
                request.WriteZeroString(label);
                return (r, _) => Assert.That(r.TryReadZeroString(out var got) ? got.ToArray() : null, Is.EqualTo(label), where);
            }
            case WireType.SpaceString:
            {
                var padded = Encoding.ASCII.GetBytes("x".PadRight(request.NextSpaceWidth));
                request.WriteSpaceString(padded);
                return (r, _) => Assert.That(r.TryReadSpaceString(out var got) ? got.ToArray() : null, Is.EqualTo(padded), where);
            }
            case WireType.ByteArray:
                return EncodeInput(round, request, memory, where);
            case WireType.ByteBuffer:
                return EncodeOutputCapacity(round, request, profile, memory, where);
            case WireType.ULongBuffer:
            {
                nuint count = (round % 3) switch { 0 => 0, 1 => 4, _ => nuint.MaxValue };
                request.WriteULongBuffer(CallerArguments.Capacity(count));
                uint expected = count == nuint.MaxValue ? uint.MaxValue - 1 : (uint)count;
                return (r, _) => Assert.That(r.TryReadULongBuffer(out uint got) ? got : 0xdead, Is.EqualTo(expected), where);
            }
            case WireType.AttributeArray:
                return EncodeTemplate(round, request, profile, memory, where);
            case WireType.AttributeBuffer:
                return EncodeAttributeBuffers(round, request, profile, memory, where);
            case WireType.Mechanism:
                return EncodeMechanism(round, request, profile, memory, where);
            default:
                throw new AssertionException($"{where}: no request case for {type}");
        }
    }

    /// <summary>'ay': NULL, a non-NULL zero-length input, a few bytes, an input large enough to be pinned.</summary>
    private static Action<RpcMessageReader, BackendArguments> EncodeInput(int round, RpcMessageWriter request, CMemory memory, string where)
    {
        int variant = round % 4;
        byte[]? data = variant switch { 0 => null, 1 => [], 2 => [1, 2, 3], _ => Pattern(BackendArguments.PinnedInputThreshold + 10) };
        byte* pointer = data is null ? null : memory.Bytes(data);
        Assert.That(CallerArguments.WriteInput(request, pointer, (nuint)(data?.Length ?? 0)), Is.EqualTo(CKR_OK), where);
        return (_, broker) =>
        {
            Assert.That(broker.TryReadInput(out byte* got, out nuint length), Is.True, where);
            Assert.That(length, Is.EqualTo((nuint)(data?.Length ?? 0)), where);
            Assert.That(got == null, Is.EqualTo(data is null), $"{where}: NULL stays NULL, a buffer a buffer");
            if (data is { Length: > 0 }) Assert.That(new ReadOnlySpan<byte>(got, data.Length).ToArray(), Is.EqualTo(data), where);
        };
    }

    /// <summary>'fy': a size query (NULL), a zero-length buffer, a 32-byte buffer, a length beyond 32 bits.</summary>
    private static Action<RpcMessageReader, BackendArguments> EncodeOutputCapacity(int round, RpcMessageWriter request, WireProfile profile,
        CMemory memory, string where)
    {
        int variant = round % 4;
        byte* buffer = variant == 0 ? null : memory.Alloc(32);
        nuint length = variant switch { 0 => 100, 1 => 0, 2 => 32, _ => nuint.MaxValue };
        CallerArguments.WriteOutputCapacity(request, buffer, &length);
        // What the broker must understand: 0 a size query; a zero-length buffer 0xffffffff from
        // version 1 on (version 0 has no form for it: a size query); lengths the wire cannot carry
        // are the largest it can, refused as more than the broker allocates.
        uint expected = variant switch
        {
            0 => 0,
            1 => profile.Version >= 1 ? RpcMessageWriter.ZeroLengthBuffer : 0,
            2 => 32,
            _ => uint.MaxValue - 1,
        };
        return (_, broker) =>
        {
            var read = broker.ReadOutputCapacity(out uint capacity);
            Assert.That(read.IsMalformed, Is.False, where);
            Assert.That(capacity, Is.EqualTo(expected), where);
            Assert.That(read.Rv, Is.EqualTo(variant == 3 ? CKR_DEVICE_MEMORY : CKR_OK), where);
        };
    }

    /// <summary>'aA': empty, flat values of every kind, a NULL value with a length, a nested template, an unavailable entry.</summary>
    private static Action<RpcMessageReader, BackendArguments> EncodeTemplate(int round, RpcMessageWriter request, WireProfile profile,
        CMemory memory, string where)
    {
        var (template, count) = (round % 4) switch
        {
            0 => memory.Template(),
            1 => memory.Template(
                memory.ULong(CKA_CLASS, CKO_SECRET_KEY), memory.Bool(CKA_TOKEN, true),
                memory.Value(CKA_LABEL, Encoding.ASCII.GetBytes("a label")), memory.Value(CKA_ID, []),
                memory.Value(CKA_START_DATE, Encoding.ASCII.GetBytes("20261202")),
                memory.Value(CKA_ALLOWED_MECHANISMS, ULongBytes(CKM_AES_CBC, CKM_AES_GCM))),
            2 => memory.Template(memory.Null(CKA_VALUE, 256), memory.Unavailable(CKA_LABEL)),
            _ => memory.Template(memory.ULong(CKA_KEY_TYPE, CKK_AES),
                memory.Nested(CKA_WRAP_TEMPLATE, memory.ULong(CKA_CLASS, CKO_SECRET_KEY), memory.Bool(CKA_EXTRACTABLE, false))),
        };
        Assert.That(CallerArguments.WriteTemplate(request, template, count), Is.EqualTo(CKR_OK), where);
        string sent = Describe(profile, template, count);
        return (_, broker) =>
        {
            Assert.That(broker.TryReadTemplate(out var got, out nuint gotCount), Is.True, where);
            Assert.That(got == null, Is.False, $"{where}: a template is never NULL on the backend side");
            Assert.That(Describe(profile, got, gotCount), Is.EqualTo(sent), where);
        };
    }

    /// <summary>'fA': empty, size queries, buffers, a zero-length template buffer before CKA_LABEL (issue 15), a nested template buffer.</summary>
    private static Action<RpcMessageReader, BackendArguments> EncodeAttributeBuffers(int round, RpcMessageWriter request, WireProfile profile,
        CMemory memory, string where)
    {
        var (template, count) = (round % 5) switch
        {
            0 => memory.Template(),
            1 => memory.Template(memory.Null(CKA_LABEL, 0), memory.Null(CKA_MODULUS, 0)),
            2 => memory.Template(memory.Value(CKA_LABEL, new byte[32]), memory.ULong(CKA_CLASS, 0)),
            3 => memory.Template(memory.Nested(CKA_WRAP_TEMPLATE), memory.Value(CKA_LABEL, new byte[32])),
            _ => memory.Template(memory.Nested(CKA_UNWRAP_TEMPLATE, memory.ULong(CKA_CLASS, 0), memory.Null(CKA_LABEL, 0))),
        };
        Assert.That(CallerArguments.WriteAttributeBuffers(request, template, count), Is.EqualTo(CKR_OK), where);
        string sent = DescribeBuffers(profile, template, count);
        return (r, _) =>
        {
            Assert.That(r.TryReadAttributeBuffer(BackendArguments.MaxOutputBuffer, out var buffers), Is.True, $"{where}: the broker takes the request");
            Assert.That(r.ReadP11KitClientForm, Is.False, $"{where}: the module writes the form every server reads (p11-kit's too)");
            Assert.That(DescribeBuffers(buffers), Is.EqualTo(sent), where);
        };
    }

    /// <summary>'M': no parameter, an IV, a parameter structure; each as the profile's encoding carries it.</summary>
    private static Action<RpcMessageReader, BackendArguments> EncodeMechanism(int round, RpcMessageWriter request, WireProfile profile,
        CMemory memory, string where)
    {
        CK_MECHANISM* mechanism = memory.Alloc<CK_MECHANISM>();
        // Only mechanisms the profile's encoding carries (the module refuses the others, as p11-kit's client does).
        var carried = new[] { CKM_SHA256, CKM_AES_CBC, CKM_RSA_PKCS_PSS }.Where(profile.CanCarry).ToArray();
        switch (carried[round % carried.Length])
        {
            case CKM_SHA256:
                *mechanism = new CK_MECHANISM { mechanism = (nuint)CKM_SHA256 };
                break;
            case CKM_AES_CBC:
                *mechanism = new CK_MECHANISM { mechanism = (nuint)CKM_AES_CBC, pParameter = memory.Bytes(Pattern(16)), ulParameterLen = 16 };
                break;
            default:
                var pss = memory.Alloc<CK_RSA_PKCS_PSS_PARAMS>();
                *pss = new CK_RSA_PKCS_PSS_PARAMS { hashAlg = (nuint)CKM_SHA256, mgf = (nuint)CKG_MGF1_SHA256, sLen = 32 };
                *mechanism = new CK_MECHANISM { mechanism = (nuint)CKM_RSA_PKCS_PSS, pParameter = pss, ulParameterLen = (nuint)sizeof(CK_RSA_PKCS_PSS_PARAMS) };
                break;
        }
        Assert.That(MechanismMarshal.FromNative(profile, mechanism, out var wire), Is.EqualTo(CKR_OK), where);
        Assert.That(request.WriteMechanism(wire), Is.EqualTo(CKR_OK), where);
        var sent = (mechanism->mechanism, mechanism->ulParameterLen,
            Parameter: mechanism->pParameter == null ? null : new ReadOnlySpan<byte>(mechanism->pParameter, (int)mechanism->ulParameterLen).ToArray());
        return (_, broker) =>
        {
            Assert.That(broker.TryReadMechanism(out var got), Is.True, where);
            Assert.That(got == null, Is.False, where);
            var received = (got->mechanism, got->ulParameterLen,
                Parameter: got->pParameter == null ? null : new ReadOnlySpan<byte>(got->pParameter, (int)got->ulParameterLen).ToArray());
            Assert.That(received, Is.EqualTo(sent), where);
        };
    }

    // ---- reply parts: the broker writes what the backend wrote, the module reads into the caller's memory ----

    private static Action<RpcMessageReader> EncodeReplyPart(WireType type, int round, RpcMessageWriter reply, BackendArguments broker,
        WireProfile profile, CMemory memory, bool withRv, string where)
    {
        switch (type)
        {
            case WireType.Byte:
            {
                byte value = (byte)(round % 2);
                reply.WriteByte(value);
                return r => Assert.That(r.TryReadByte(out byte got) && got == value, Is.True, where);
            }
            case WireType.ULong:
            {
                ulong value = (round % 3) switch { 0 => 0, 1 => 0xffffffffUL, _ => ulong.MaxValue };
                reply.WriteULong(value);
                return r => Assert.That(r.TryReadULong(out ulong got) ? got : 0xdead, Is.EqualTo(value), where);
            }
            case WireType.SpaceString:
            {
                var padded = Encoding.ASCII.GetBytes("y".PadRight(reply.NextSpaceWidth));
                reply.WriteSpaceString(padded);
                return r => Assert.That(r.TryReadSpaceString(out var got) ? got.ToArray() : null, Is.EqualTo(padded), where);
            }
            case WireType.Version:
            {
                reply.WriteVersion(3, (byte)round);
                return r => Assert.That(r.TryReadVersion(out byte major, out byte minor) && major == 3 && minor == (byte)round, Is.True, where);
            }
            case WireType.ByteArray:
                return EncodeOutput(round, broker, memory, where);
            case WireType.ULongArray:
                return EncodeULongs(round, broker, memory, where);
            case WireType.AttributeArray when withRv:
                return EncodeTemplateValues(round, reply, profile, memory, where);
            case WireType.MechanismUpdate:
            {
                var mechanism = memory.Alloc<CK_MECHANISM>();
                *mechanism = new CK_MECHANISM { mechanism = (nuint)CKM_ECDH1_DERIVE };
                reply.WriteMechanismUpdate(CKM_ECDH1_DERIVE, MechanismNative.UpdateOf(mechanism));
                return r =>
                {
                    Assert.That(r.TryReadMechanismUpdate(CKM_ECDH1_DERIVE, out var update), Is.True, where);
                    Assert.That(MechanismUpdates.Apply(mechanism, update), Is.EqualTo(CKR_OK), where);
                };
            }
            default:
                throw new AssertionException($"{where}: no reply case for {type}");
        }
    }

    /// <summary>'ay' reply: data that fits, a size answer, a buffer too small, an empty output, the size of an empty output.</summary>
    private static Action<RpcMessageReader> EncodeOutput(int round, BackendArguments broker, CMemory memory, string where)
    {
        int variant = round % 5;
        byte[] data = Pattern(20);
        // What the backend answered, and what the caller gave.
        (ulong rv, bool backendBuffer, nuint length, bool callerBuffer, nuint capacity) = variant switch
        {
            0 => (CKR_OK, true, (nuint)20, true, (nuint)32),
            1 => (CKR_OK, false, (nuint)256, false, (nuint)0),
            2 => (CKR_BUFFER_TOO_SMALL, true, (nuint)300, true, (nuint)10),
            3 => (CKR_OK, true, (nuint)0, true, (nuint)16),
            _ => (CKR_OK, false, (nuint)0, false, (nuint)0),
        };
        broker.WriteOutput(rv, backendBuffer ? memory.Bytes(data) : null, length);
        return r =>
        {
            byte* buffer = callerBuffer ? memory.Alloc((int)capacity) : null;
            nuint got = capacity;
            ulong result = CallerArguments.ReadOutput(r, buffer, &got, capacity);
            Assert.That((result, got), Is.EqualTo((rv, length)), where);
            if (variant == 0) Assert.That(new ReadOnlySpan<byte>(buffer, (int)got).ToArray(), Is.EqualTo(data), where);
        };
    }

    /// <summary>'au' reply: values that fit, only a count (size query), a count too large for the caller's array.</summary>
    private static Action<RpcMessageReader> EncodeULongs(int round, BackendArguments broker, CMemory memory, string where)
    {
        int variant = round % 3;
        var values = memory.Alloc<nuint>(5);
        for (int i = 0; i < 5; i++) values[i] = (nuint)(0x10 + i);
        ulong rv = variant == 2 ? CKR_BUFFER_TOO_SMALL : CKR_OK;
        broker.WriteULongs(rv, variant == 1 ? null : values, 5, arrayWanted: variant == 0);
        return r =>
        {
            nuint* array = variant == 1 ? null : memory.Alloc<nuint>(8);
            nuint count = variant == 2 ? (nuint)2 : 8;
            ulong result = CallerArguments.ReadULongs(r, array, &count);
            Assert.That((result, count), Is.EqualTo((rv, (nuint)5)), where);
            if (variant == 0) Assert.That(new ReadOnlySpan<nuint>(array, 5).ToArray(), Is.EqualTo(new ReadOnlySpan<nuint>(values, 5).ToArray()), where);
        };
    }

    /// <summary>'aAu': values that fit, size answers, an unavailable value, a nested template, each with the call's CK_RV.</summary>
    private static Action<RpcMessageReader> EncodeTemplateValues(int round, RpcMessageWriter reply, WireProfile profile, CMemory memory, string where)
    {
        int variant = round % 4;
        var label = Encoding.ASCII.GetBytes("token label");
        // The backend's filled template and the caller's template as it asked.
        var (filled, count) = variant switch
        {
            0 => memory.Template(memory.Value(CKA_LABEL, label), memory.ULong(CKA_CLASS, CKO_PUBLIC_KEY)),
            1 => memory.Template(memory.Null(CKA_LABEL, (nuint)label.Length), memory.Null(CKA_MODULUS, 256)),
            2 => memory.Template(memory.Unavailable(CKA_VALUE), memory.Bool(CKA_TOKEN, true)),
            _ => memory.Template(memory.Nested(CKA_WRAP_TEMPLATE, memory.ULong(CKA_CLASS, CKO_SECRET_KEY))),
        };
        ulong rv = variant == 2 ? CKR_ATTRIBUTE_SENSITIVE : CKR_OK;
        reply.BeginAttributeArray((uint)count);
        Assert.That(NativeTemplates.WriteAttributes(reply.Writer, profile, filled, count), Is.EqualTo(CKR_OK), where);
        reply.WriteULong(rv);
        string expected = Describe(profile, filled, count);
        return r =>
        {
            var (asked, askedCount) = variant switch
            {
                0 => memory.Template(memory.Value(CKA_LABEL, new byte[32]), memory.Value(CKA_CLASS, new byte[8])),
                1 => memory.Template(memory.Null(CKA_LABEL, 0), memory.Null(CKA_MODULUS, 0)),
                2 => memory.Template(memory.Value(CKA_VALUE, new byte[32]), memory.Value(CKA_TOKEN, new byte[1])),
                _ => memory.Template(memory.Nested(CKA_WRAP_TEMPLATE, memory.Value(CKA_CLASS, new byte[8]))),
            };
            Assert.That(CallerArguments.ReadTemplateValues(r, asked, askedCount), Is.EqualTo(rv), where);
            Assert.That(Describe(profile, asked, askedCount), Is.EqualTo(expected), where);
        };
    }

    // ---- C memory for the tests, and how templates are compared ------------------------------------------------

    private static byte[] Pattern(int length) => Enumerable.Range(0, length).Select(i => (byte)(i * 7 + 1)).ToArray();

    private static byte[] ULongBytes(params ulong[] values) => values.SelectMany(BitConverter.GetBytes).ToArray();

    /// <summary>A template as text: type, length (or unavailable), NULL or the value; nested templates inside.</summary>
    private static string Describe(WireProfile profile, CK_ATTRIBUTE* template, nuint count)
    {
        var text = new StringBuilder();
        for (nuint i = 0; i < count; i++)
        {
            var a = template[i];
            text.Append($"{(ulong)a.type:x}:");
            if (a.ulValueLen == NativeTemplates.Unavailable) text.Append("unavailable");
            else if (a.pValue == null) text.Append($"NULL/{a.ulValueLen}");
            else if (profile.KindOf(a.type) == AttributeValueKind.AttributeArray)
                text.Append('[').Append(Describe(profile, (CK_ATTRIBUTE*)a.pValue, a.ulValueLen / (nuint)sizeof(CK_ATTRIBUTE))).Append(']');
            else text.Append(Convert.ToHexString(new ReadOnlySpan<byte>(a.pValue, (int)a.ulValueLen)));
            text.Append(' ');
        }
        return text.ToString();
    }

    /// <summary>What a C_GetAttributeValue template asks for, as the broker should understand it.</summary>
    private static string DescribeBuffers(WireProfile profile, CK_ATTRIBUTE* template, nuint count)
    {
        var text = new StringBuilder();
        for (nuint i = 0; i < count; i++)
        {
            var a = template[i];
            nuint length = a.pValue == null ? 0 : a.ulValueLen;
            text.Append($"{(ulong)a.type:x}/{length}");
            if (length != 0 && profile.NestedAttributeBuffers && profile.KindOf(a.type) == AttributeValueKind.AttributeArray)
                text.Append('[').Append(DescribeBuffers(profile, (CK_ATTRIBUTE*)a.pValue, length / (nuint)sizeof(CK_ATTRIBUTE))).Append(']');
            text.Append(' ');
        }
        return text.ToString();
    }

    private static string DescribeBuffers(WireAttributeBuffer[] buffers)
    {
        var text = new StringBuilder();
        foreach (var b in buffers)
        {
            text.Append($"{b.Type:x}/{b.Length}");
            if (b.Nested is { } nested) text.Append('[').Append(DescribeBuffers(nested)).Append(']');
            text.Append(' ');
        }
        return text.ToString();
    }

    /// <summary>A C template: the array and its count.</summary>
    private readonly struct CTemplate(CK_ATTRIBUTE* array, nuint count)
    {
        public void Deconstruct(out CK_ATTRIBUTE* template, out nuint n) { template = array; n = count; }
    }

    /// <summary>Zeroed C memory freed with the test.</summary>
    private sealed class CMemory : IDisposable
    {
        private readonly List<nint> _blocks = [];

        public byte* Alloc(int size)
        {
            var block = (byte*)NativeMemory.AllocZeroed((nuint)Math.Max(size, 1));
            _blocks.Add((nint)block);
            return block;
        }

        public T* Alloc<T>(int count = 1) where T : unmanaged => (T*)Alloc(sizeof(T) * count);

        public byte* Bytes(byte[] data)
        {
            var block = Alloc(data.Length);
            data.CopyTo(new Span<byte>(block, data.Length));
            return block;
        }

        public CK_ATTRIBUTE Value(ulong type, byte[] value) => new() { type = (nuint)type, pValue = Bytes(value), ulValueLen = (nuint)value.Length };
        public CK_ATTRIBUTE ULong(ulong type, ulong value) => Value(type, BitConverter.GetBytes(value));
        public CK_ATTRIBUTE Bool(ulong type, bool value) => Value(type, [value ? (byte)1 : (byte)0]);
        public CK_ATTRIBUTE Null(ulong type, nuint length) => new() { type = (nuint)type, ulValueLen = length };
        public CK_ATTRIBUTE Unavailable(ulong type) => new() { type = (nuint)type, ulValueLen = NativeTemplates.Unavailable };

        public CK_ATTRIBUTE Nested(ulong type, params CK_ATTRIBUTE[] inner)
        {
            var (array, count) = Template(inner);
            return new() { type = (nuint)type, pValue = array, ulValueLen = count * (nuint)sizeof(CK_ATTRIBUTE) };
        }

        public CTemplate Template(params CK_ATTRIBUTE[] attributes)
        {
            var array = Alloc<CK_ATTRIBUTE>(Math.Max(attributes.Length, 1));
            for (int i = 0; i < attributes.Length; i++) array[i] = attributes[i];
            return new CTemplate(array, (nuint)attributes.Length);
        }

        public void Dispose()
        {
            foreach (var block in _blocks) NativeMemory.Free((void*)block);
        }
    }
}
