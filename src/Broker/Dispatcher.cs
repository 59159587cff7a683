using System.Diagnostics;
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
    /// <summary>
    /// Marks the request as not matching its signature: the connection closes after it. A flag
    /// beside the CK_RV, never a CK_RV value, so no code a module returns can be taken for it; the
    /// value handed back is never sent.
    /// </summary>
    private ulong Malformed
    {
        get
        {
            _malformed = true;
            return CKR_GENERAL_ERROR;
        }
    }

    private bool _malformed;

    private const uint MaxOutputBuffer = BackendArguments.MaxOutputBuffer;

    private readonly Backend _backend;
    private readonly TokenFilter _filter;
    private readonly ClientState _client;
    private readonly BrokerLog _log;
    private readonly RpcMessageReader _request;
    private readonly RpcMessageWriter _reply;
    private readonly NativeArena _arena = new();
    private readonly BackendArguments _arguments;
    private readonly SlotEvents _events;
    private CK_FUNCTION_LIST_3_0* F => _backend.Functions;

    /// <summary>False while the connection's reader runs a call that may block: it must not (see ClientConnection).</summary>
    public bool MayBlock { get; set; } = true;

    /// <summary>The request being handled, whole (see <see cref="ReadSession"/>).</summary>
    private ReadOnlyMemory<byte> _body;

    /// <summary>The request repeats a protocol-0 zero-output request already performed (see <see cref="CallWithOutput"/>).</summary>
    private bool _zeroOutputRepeat;

    public Dispatcher(Backend backend, TokenFilter filter, ClientState client, BrokerLog log, WireProfile profile)
    {
        _backend = backend;
        _filter = filter;
        _client = client;
        _log = log;
        _request = new RpcMessageReader(profile);
        _reply = new RpcMessageWriter(profile, 4096);
        _arguments = new BackendArguments(_request, _reply, _arena);
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
        _malformed = false;
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
        if (_malformed)
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

    // The request's parts become the backend's arguments at the edge (BackendArguments, beside the
    // module's CallerArguments in src/Wire/Edge); these name them for the handlers.
    private bool ReadInput(out byte* data, out nuint length) => _arguments.TryReadInput(out data, out length);

    private ulong ReadOutputCapacity(out uint capacity)
    {
        var read = _arguments.ReadOutputCapacity(out capacity);
        return read.IsMalformed ? Malformed : read.Rv;
    }

    private ulong ReadMechanism(out CK_MECHANISM* mechanism) => _arguments.TryReadMechanism(out mechanism) ? CKR_OK : Malformed;

    private ulong ReadTemplate(out CK_ATTRIBUTE* template, out nuint count) =>
        _arguments.TryReadTemplate(out template, out count) ? CKR_OK : Malformed;

    private void WriteOutput(ulong rv, byte* buffer, nuint length) => _arguments.WriteOutput(rv, buffer, length);

    private void WriteULongs(ulong rv, nuint* values, nuint count, bool arrayWanted) => _arguments.WriteULongs(rv, values, count, arrayWanted);

    /// <summary>Capacities up to this are allocated as asked; larger ones only as far as the backend needs.</summary>
    private const uint DirectAllocationLimit = 64 * 1024;

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

    /// <summary>A fixed-size C field ('s') of the width the call table gives it.</summary>
    private void WriteSpace(byte* field) => _reply.WriteSpaceString(new ReadOnlySpan<byte>(field, _reply.NextSpaceWidth));

    private bool Done => _request.Complete;
}
