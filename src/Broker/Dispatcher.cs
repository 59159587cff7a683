using System.Diagnostics;
using P11Proxy.Native;
using P11Proxy.Pkcs11;
using P11Proxy.Wire;
using static P11Proxy.Pkcs11.Pkcs11Constants;
using Id = P11Proxy.Wire.RpcCallId;

namespace P11Proxy.Broker;

/// <summary>
/// Server side of every call for one client connection: decodes the request in the order of the
/// call table's request signature, calls the backend with arguments built in native memory, and
/// encodes the reply in the order of the response signature. Malformed requests close the
/// connection (the caller does that on a false return); backend errors become error replies.
/// </summary>
internal sealed unsafe partial class Dispatcher : IDisposable
{
    /// <summary>Not a CK_RV: the request did not match its signature.</summary>
    private const ulong Malformed = 0xffff_ffff_ffff_fff0;

    /// <summary>Largest output buffer a client may make the broker allocate for one call.</summary>
    private const uint MaxOutputBuffer = 64u << 20;

    private readonly Backend _backend;
    private readonly TokenFilter _filter;
    private readonly ClientState _client;
    private readonly ProcessLog _log;
    private readonly RpcMessageReader _request;
    private readonly RpcMessageWriter _reply;
    private readonly NativeArena _arena = new();
    private readonly SlotEvents _events;
    private CK_FUNCTION_LIST_3_0* F => _backend.Functions;

    /// <summary>False while the connection's reader runs a call that may block: it must not (see ClientConnection).</summary>
    public bool MayBlock { get; set; } = true;

    /// <summary>The request being handled, whole (see <see cref="ReadSession"/>).</summary>
    private ReadOnlyMemory<byte> _body;

    /// <summary>The request repeats a protocol-0 zero-output request already performed (see <see cref="CallWithOutput"/>).</summary>
    private bool _zeroOutputRepeat;

    public Dispatcher(Backend backend, TokenFilter filter, ClientState client, ProcessLog log, WireProfile profile)
    {
        _backend = backend;
        _filter = filter;
        _client = client;
        _log = log;
        _request = new RpcMessageReader(profile);
        _reply = new RpcMessageWriter(profile, 4096);
        _events = backend.Events(filter, log);
    }

    /// <summary>
    /// Handles one request body and leaves the reply in <paramref name="reply"/>. Returns false when
    /// the request was malformed: the connection must then be closed. <paramref name="clientMayBeOurs"/>
    /// says whether the request's frame came without options (p11-kit's client always puts its
    /// module's name there, ours nothing), which decides at C_Initialize whether p11proxy's
    /// capabilities are announced in <see cref="ReplyOptions"/> (see <see cref="Capabilities"/>).
    /// </summary>
    public bool Handle(ReadOnlyMemory<byte> body, bool clientMayBeOurs, out WireWriter reply)
    {
        reply = _reply.Writer;
        _clientMayBeOurs = clientMayBeOurs;
        _replyOptions = default;
        var profile = _client.Profile;
        if (!ReferenceEquals(_request.Profile, profile))
        {
            _request.Profile = profile;
            _reply.Profile = profile;
        }
        var status = _request.Parse(body, MessageKind.Request);
        if (status != ParseStatus.Ok)
        {
            _log.Warn($"{_client.Peer}: refused a request ({status}); closing the connection");
            return false;
        }
        var call = _request.Call!;
        long started = _log.Verbose ? Stopwatch.GetTimestamp() : 0;
        ulong rv;
        _body = body;
        _zeroOutputRepeat = false;
        try
        {
            rv = Dispatch(call.Id);
        }
        catch (InvalidOperationException e)
        {
            // A handler read the wrong signature part: a bug here, never the client's input.
            _log.Warn($"{_client.Peer}: {call.Name}: internal error: {e.Message}");
            rv = CKR_GENERAL_ERROR;
        }
        finally
        {
            _arena.Reset();
            _body = default;
        }
        if (rv == Malformed)
        {
            _log.Warn($"{_client.Peer}: {call.Name}: malformed arguments; closing the connection");
            return false;
        }
        if (rv != CKR_OK)
            _reply.BeginError(rv);
        else if (!_reply.Complete)
        {
            _log.Warn($"{_client.Peer}: {call.Name}: reply could not be encoded");
            _reply.BeginError(CKR_DEVICE_MEMORY);
        }
        if (_log.Verbose)
            _log.Trace($"{_client.Peer}: {call.Name}{_traceDetail} -> {Pkcs11Names.ReturnValue(rv) ?? rv.ToString("x")} " +
                       $"({Stopwatch.GetElapsedTime(started).TotalMicroseconds:0} µs)");
        _traceDetail = "";
        return true;
    }

    private string _traceDetail = "";
    private bool _clientMayBeOurs;
    private byte[]? _replyOptions;

    /// <summary>What goes in the options field of the reply just built (empty but for an announcing C_Initialize).</summary>
    public ReadOnlySpan<byte> ReplyOptions => _replyOptions;

    /// <summary>Adds slot/session details to the verbose trace line; never values or PINs.</summary>
    private void Note(string detail)
    {
        if (_log.Verbose) _traceDetail = detail;
    }

    /// <summary>Disconnect: close whatever the client left open, without logging anything sensitive.</summary>
    public void CloseClientSessions()
    {
        foreach (var session in _client.TakeAllSessions())
            F->C_CloseSession(session);
    }

    public void Dispose()
    {
        _arena.Dispose();
        _reply.Dispose();
    }

    // ---- request decoding helpers ------------------------------------------------------------------

    private bool ReadULong(out nuint value)
    {
        bool ok = _request.TryReadULong(out ulong v);
        value = (nuint)v;
        return ok;
    }

    private bool ReadSession(out nuint session, out ulong rv)
    {
        rv = CKR_OK;
        if (!ReadULong(out session)) { rv = Malformed; return false; }
        if (_log.Verbose) Note($" session={session}"); // formatted only for the trace: no string per call otherwise
        if (!_client.Owns(session)) { rv = CKR_SESSION_HANDLE_INVALID; return false; }
        if (_request.Profile.Version == 0 && _client.HasZeroOutputRequest(session))
            _zeroOutputRepeat = _client.TakeZeroOutputRepeat(session, _body.Span);
        return true;
    }

    /// <summary>Inputs from this size on are passed to the backend where they lie in the request, not copied.</summary>
    private const int PinnedInputThreshold = 4096;

    /// <summary>'ay' argument into native memory (NULL stays NULL; an absent array keeps its length, as p11-kit does).</summary>
    private bool ReadInput(out byte* data, out nuint length)
    {
        data = null;
        length = 0;
        if (!_request.TryReadByteArray(out bool present, out var bytes, out uint declared))
            return false;
        if (!present)
        {
            length = declared;
            return true;
        }
        if (!bytes.IsNull)
            data = bytes.Length >= PinnedInputThreshold ? _arena.Pin(bytes.Data) : _arena.Copy(bytes.Data.Span);
        length = (nuint)bytes.Length;
        return true;
    }

    /// <summary>Capacities up to this are allocated as asked; larger ones only as far as the backend needs.</summary>
    private const uint DirectAllocationLimit = 64 * 1024;

    /// <summary>'fy': the client's output capacity (0: size query; 0xffffffff: a zero-length non-NULL buffer).</summary>
    private ulong ReadOutputCapacity(out uint capacity)
    {
        if (!_request.TryReadByteBuffer(out capacity))
            return Malformed;
        if (capacity > MaxOutputBuffer && capacity != RpcMessageWriter.ZeroLengthBuffer)
            return CKR_DEVICE_MEMORY;
        return CKR_OK;
    }

    /// <summary>A backend call that writes into an output buffer (NULL asks for the size).</summary>
    private delegate nuint OutputCall(byte* output, nuint* length);

    /// <summary>
    /// Runs <paramref name="call"/> with an output buffer for the client's capacity. Nothing is
    /// allocated from a large capacity the client merely claims: above a small limit the backend is
    /// asked for the size first, and only what it needs (at most the capacity) is allocated.
    /// </summary>
    private ulong CallWithOutput(uint capacity, OutputCall call, out byte* buffer, out nuint length) =>
        CallWithOutput(capacity, call, out buffer, out length, session: null);

    /// <summary>
    /// As above, for a call on <paramref name="session"/>. Protocol 0 has no form for a non-NULL
    /// output buffer of length 0: p11-kit 0.24's client sends it as capacity 0, like a size query.
    /// When the backend says nothing remains to output, the call is therefore performed for real
    /// with a zero-length buffer (a caller with one sees the operation end, as direct); a caller
    /// that only asked the size then repeats the same request with its zero-length buffer, and that
    /// repeat, next on the session, is answered alike without being performed twice.
    /// </summary>
    private ulong CallWithOutput(uint capacity, OutputCall call, out byte* buffer, out nuint length, nuint? session)
    {
        buffer = null;
        nuint size = 0;
        ulong rv;
        bool protocol0 = _request.Profile.Version == 0 && session is not null;
        if (capacity == 0)
        {
            if (protocol0 && _zeroOutputRepeat)
            {
                buffer = (byte*)_arena.Alloc(1);
                length = 0;
                return CKR_OK;
            }
            rv = call(null, &size);
            if (protocol0 && rv == CKR_OK && size == 0)
            {
                buffer = (byte*)_arena.Alloc(1);
                rv = call(buffer, &size);
                if (rv == CKR_OK && size == 0)
                    _client.RememberZeroOutputRequest(session!.Value, System.Security.Cryptography.SHA256.HashData(_body.Span));
            }
            length = size;
            return rv;
        }
        if (capacity == RpcMessageWriter.ZeroLengthBuffer)
        {
            buffer = (byte*)_arena.Alloc(1);
            rv = call(buffer, &size);
            length = size;
            return Written(rv, 0, ref length);
        }
        size = capacity;
        if (capacity > DirectAllocationLimit)
        {
            nuint needed = 0;
            rv = call(null, &needed);
            if (rv != CKR_OK)
            {
                length = needed;
                return rv;
            }
            if (needed < size) size = needed;
        }
        buffer = (byte*)_arena.TryAllocLarge(size);
        if (buffer == null)
        {
            length = 0;
            return CKR_DEVICE_MEMORY;
        }
        nuint allocated = size;
        rv = call(buffer, &size);
        length = size;
        return Written(rv, allocated, ref length);
    }

    /// <summary>
    /// A module that reports success with more output than the buffer it was given holds is out of
    /// step: the reply must not read past the buffer (it would send the client broker memory).
    /// </summary>
    private ulong Written(ulong rv, nuint allocated, ref nuint length)
    {
        if (rv != CKR_OK || length <= allocated)
            return rv;
        _log.Warn($"{_client.Peer}: {_request.Call!.Name}: the module reported {length} bytes in a buffer of {allocated}; CKR_DEVICE_ERROR");
        length = 0;
        return CKR_DEVICE_ERROR;
    }

    private ulong ReadMechanism(out CK_MECHANISM* mechanism)
    {
        mechanism = null;
        if (!_request.TryReadMechanism(out var wire))
            return Malformed;
        mechanism = MechanismNative.ToNative(_arena, wire);
        return CKR_OK;
    }

    /// <summary>'aA' argument: a template with values, nested templates rebuilt as native arrays.</summary>
    private ulong ReadTemplate(out CK_ATTRIBUTE* template, out nuint count)
    {
        template = null;
        count = 0;
        if (!_request.TryReadAttributeArray(out var attributes))
            return Malformed;
        // An empty template is an empty array, not NULL: modules refuse a NULL template in calls
        // that accept an empty one (C_CopyObject, C_SetAttributeValue). The wire has no NULL template.
        template = attributes.Length == 0 ? _arena.Alloc<CK_ATTRIBUTE>(1) : ToNative(attributes);
        count = (nuint)attributes.Length;
        return CKR_OK;
    }

    private CK_ATTRIBUTE* ToNative(WireAttribute[] attributes)
    {
        if (attributes.Length == 0)
            return null;
        var template = _arena.Alloc<CK_ATTRIBUTE>(attributes.Length);
        for (int i = 0; i < attributes.Length; i++)
        {
            var source = attributes[i];
            template[i].type = (nuint)source.Type;
            if (!source.Valid)
            {
                template[i].ulValueLen = NativeTemplates.Unavailable;
                continue;
            }
            if (source.Kind == AttributeValueKind.AttributeArray)
            {
                var nested = source.Nested ?? [];
                template[i].pValue = ToNative(nested);
                template[i].ulValueLen = (nuint)(nested.Length * sizeof(CK_ATTRIBUTE));
                continue;
            }
            if (source.Kind is AttributeValueKind.ByteArray or AttributeValueKind.Date && source.Bytes.IsNull)
            {
                // A NULL value with a length: the client asks nothing of it but its size.
                template[i].ulValueLen = source.Length;
                continue;
            }
            // Only what actually arrived is allocated; the announced length is not trusted.
            ulong size = source.NativeLength;
            var value = (byte*)_arena.Alloc((nuint)size);
            source.CopyFlatValueTo(new Span<byte>(value, (int)size));
            template[i].pValue = size == 0 ? null : value;
            template[i].ulValueLen = (nuint)size;
        }
        return template;
    }

    // ---- reply encoding helpers ----------------------------------------------------------------------

    private void BeginReply() => _reply.Begin(_request.Call!, MessageKind.Response, _request.TypedForm);

    /// <summary>'ay' reply after a call that filled a buffer, with p11-kit's conventions for sizes.</summary>
    private ulong ReplyOutput(ulong rv, byte* buffer, nuint length)
    {
        if (rv != CKR_OK && rv != CKR_BUFFER_TOO_SMALL)
            return rv;
        BeginReply();
        WriteOutput(rv, buffer, length);
        return CKR_OK;
    }

    private void WriteOutput(ulong rv, byte* buffer, nuint length)
    {
        if (length > WireWriter.MaxArrayLength)
        {
            // A length the wire cannot carry: as a size answer, the largest it can (the call's CK_RV
            // still travels: NSS softoken answers a too-small buffer for C_Sign with
            // CKR_BUFFER_TOO_SMALL and an uninitialised length); as data, nothing.
            if (rv == CKR_BUFFER_TOO_SMALL || buffer == null) _reply.WriteByteArrayLengthOnly(WireWriter.MaxArrayLength);
            else _reply.Writer.Fail();
            return;
        }
        if (rv == CKR_BUFFER_TOO_SMALL || buffer == null)
        {
            if (length != 0 || rv == CKR_BUFFER_TOO_SMALL) _reply.WriteByteArrayLengthOnly((uint)length);
            else _reply.WriteByteArray(WireBytes.Null);
            return;
        }
        _reply.WriteByteArray(new ReadOnlySpan<byte>(buffer, (int)length));
    }

    /// <summary>'au' reply: an array when it fits the client's capacity, else only its length.</summary>
    private void WriteULongs(ulong rv, nuint* values, nuint count, bool arrayWanted)
    {
        if (rv == CKR_BUFFER_TOO_SMALL || !arrayWanted || values == null)
        {
            _reply.WriteULongArrayLengthOnly((uint)Math.Min(count, uint.MaxValue));
            return;
        }
        Span<ulong> copy = count <= 64 ? stackalloc ulong[(int)count] : new ulong[(int)count];
        for (int i = 0; i < (int)count; i++) copy[i] = values[i];
        _reply.WriteULongArray(copy);
    }

    private void WriteSpace(byte* field, int width) => _reply.WriteSpaceString(new ReadOnlySpan<byte>(field, width));

    private bool Done => _request.Complete;
}
