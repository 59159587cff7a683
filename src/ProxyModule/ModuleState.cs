using System.Runtime.InteropServices;
using P11Proxy.Wire.Transport;
using static P11Proxy.Pkcs11.Pkcs11Constants;

namespace P11Proxy.Module;

/// <summary>
/// Whether this process initialised the module, and its connection. A forked child inherits the
/// parent's memory but must not share its socket: it sees CKR_CRYPTOKI_NOT_INITIALIZED until it
/// calls C_Initialize itself, which opens a connection of its own (PKCS#11's rule, and p11-kit's).
/// </summary>
internal static class ModuleState
{
    private static readonly object Gate = new();
    private static Connection? _connection;
    private static int _initializedGeneration = -1;

    [DllImport("p11proxy_native", EntryPoint = "p11proxy_fork_generation")]
    private static extern unsafe int* p11proxy_fork_generation();

    /// <summary>Incremented in every forked child (native/forkgate.c); read without a system call.</summary>
    private static readonly unsafe int* ForkGeneration = p11proxy_fork_generation();

    private static unsafe int CurrentForkGeneration => Volatile.Read(ref *ForkGeneration);

    /// <summary>The live connection, or the CK_RV to return when there is none.</summary>
    public static ulong TryGet(out Connection connection)
    {
        connection = Volatile.Read(ref _connection)!;
        if (connection is null || Volatile.Read(ref _initializedGeneration) != CurrentForkGeneration)
        {
            connection = null!;
            return CKR_CRYPTOKI_NOT_INITIALIZED;
        }
        return CKR_OK;
    }

    /// <summary>
    /// The host loads the module (C_GetFunctionList, C_GetInterface[List]): unless this process
    /// has it initialised already, its next C_Initialize reads the settings afresh (see ModuleConfig).
    /// </summary>
    public static void HostLoaded()
    {
        if (TryGet(out _) != CKR_OK) ModuleConfig.Unsettle();
    }

    private static byte[] _reserved = [];
    private static bool _hasReserved;
    private static long _lastReconnectAttempt;
    private static ulong _generation;

    public static ulong Initialize(ReadOnlySpan<byte> reserved, bool hasReserved)
    {
        lock (Gate)
        {
            int generation = CurrentForkGeneration;
            if (_connection is not null && _initializedGeneration == generation)
                return CKR_CRYPTOKI_ALREADY_INITIALIZED;
            // A connection inherited across fork belongs to the parent: forget it without
            // closing it, since closing would not disturb the parent but using it would.
            _connection = null;
            ulong rv = Connect(reserved, hasReserved, out var connection);
            if (rv != CKR_OK)
                return rv;
            _reserved = reserved.ToArray();
            _hasReserved = hasReserved;
            _initializedGeneration = generation;
            Volatile.Write(ref _connection, connection);
            return CKR_OK;
        }
    }

    /// <summary>
    /// After the broker went away, the next call that starts something (C_OpenSession, slot and
    /// token queries) connects again, at most once a second. Sessions of the old connection stay
    /// invalid: the new broker connection never knew them.
    /// </summary>
    public static ulong Reconnect(Connection broken)
    {
        lock (Gate)
        {
            if (!ReferenceEquals(_connection, broken) || _initializedGeneration != CurrentForkGeneration)
                return TryGet(out _);
            long now = Environment.TickCount64;
            if (now - _lastReconnectAttempt < 1000)
                return CKR_DEVICE_REMOVED;
            _lastReconnectAttempt = now;
            ulong rv = Connect(_reserved, _hasReserved, out var connection);
            if (rv != CKR_OK)
                return CKR_DEVICE_REMOVED;
            _generation = _generation % 255 + 1;
            connection.AssignGeneration(_generation);
            Log.Error($"reconnected to the broker at {connection.Address}; earlier sessions are invalid");
            Volatile.Write(ref _connection, connection);
            broken.Dispose();
            return CKR_OK;
        }
    }

    private static ulong Connect(ReadOnlySpan<byte> reserved, bool hasReserved, out Connection connection)
    {
        connection = null!;
        {
            var config = ModuleConfig.Settled(Libc.getuid());
            if (!ServerAddress.TryParse(config.Address, out var address, out string error))
            {
                Log.Error($"bad broker address from {config.Source}: {error}");
                return CKR_DEVICE_ERROR;
            }
            try
            {
                connection = Connection.Open(address, config.TimeoutMilliseconds, config.OfferedVersion, config.BrokerUid);
            }
            catch (TransportException e)
            {
                Log.Error($"C_Initialize: {e.Message} (address from {config.Source})");
                return CKR_DEVICE_ERROR;
            }

            ulong rv = Remote.Initialize(connection, reserved, hasReserved);
            if (rv != CKR_OK)
            {
                connection.Dispose();
                connection = null!;
                return rv;
            }
            return CKR_OK;
        }
    }

    public static ulong Finalize()
    {
        lock (Gate)
        {
            if (_connection is null || _initializedGeneration != CurrentForkGeneration)
                return CKR_CRYPTOKI_NOT_INITIALIZED;
            var connection = _connection;
            _connection = null;
            _initializedGeneration = -1;
            ulong rv = Remote.Finalize(connection);
            if (rv != CKR_OK)
                Log.Trace($"C_Finalize: the broker answered {Names.Rv(rv)}; disconnected anyway");
            return CKR_OK;
        }
    }
}
