using System.Runtime.InteropServices;
using P11Proxy.Wire.Transport;
using static P11Proxy.Pkcs11.Pkcs11Constants;

namespace P11Proxy.Module;

/// <summary>
/// Whether this process initialised the module, and its connection. A forked child inherits the
/// parent's memory but must not share its socket: it sees CKR_CRYPTOKI_NOT_INITIALIZED until it
/// calls C_Initialize itself, which opens a connection of its own (PKCS#11's rule, and p11-kit's).
/// </summary>
internal static partial class ModuleState
{
    private static readonly object Gate = new();
    private static Connection? _connection;
    private static int _initializedPid;

    [LibraryImport("libc")]
    private static partial int getpid();

    [LibraryImport("libc")]
    private static partial uint getuid();

    /// <summary>The live connection, or the CK_RV to return when there is none.</summary>
    public static ulong TryGet(out Connection connection)
    {
        connection = Volatile.Read(ref _connection)!;
        if (connection is null || Volatile.Read(ref _initializedPid) != getpid())
        {
            connection = null!;
            return CKR_CRYPTOKI_NOT_INITIALIZED;
        }
        return CKR_OK;
    }

    public static ulong Initialize(ReadOnlySpan<byte> reserved, bool hasReserved)
    {
        lock (Gate)
        {
            int pid = getpid();
            if (_connection is not null && _initializedPid == pid)
                return CKR_CRYPTOKI_ALREADY_INITIALIZED;
            // A connection inherited across fork belongs to the parent: forget it without
            // closing it, since closing would not disturb the parent but using it would.
            _connection = null;

            var config = ModuleConfig.Load(getuid());
            if (!ServerAddress.TryParse(config.Address, out var address, out string error))
            {
                Log.Error($"bad broker address from {config.Source}: {error}");
                return CKR_DEVICE_ERROR;
            }
            Connection connection;
            try
            {
                connection = Connection.Open(address, config.TimeoutMilliseconds);
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
                return rv;
            }
            _initializedPid = pid;
            Volatile.Write(ref _connection, connection);
            return CKR_OK;
        }
    }

    public static ulong Finalize()
    {
        lock (Gate)
        {
            if (_connection is null || _initializedPid != getpid())
                return CKR_CRYPTOKI_NOT_INITIALIZED;
            var connection = _connection;
            ulong rv = Remote.Finalize(connection);
            if (rv != CKR_OK)
                Log.Trace($"C_Finalize: the broker answered {Names.Rv(rv)}; disconnecting anyway");
            _connection = null;
            _initializedPid = 0;
            connection.Dispose();
            return CKR_OK;
        }
    }
}
