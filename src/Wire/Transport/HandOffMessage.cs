using System.Buffers.Binary;

namespace P11Proxy.Wire.Transport;

/// <summary>
/// The messages a broker's listener and its worker processes exchange on their control socket
/// (a SOCK_SEQPACKET pair: one message per send, never split or merged):
/// <list type="bullet">
/// <item>worker → listener, once: <see cref="WorkerReady"/>, the module is loaded (and initialised, if asked);</item>
/// <item>listener → worker, once: <see cref="ClientHandOff"/>, with the client's connection
/// attached (SCM_RIGHTS) after the listener checked the peer and answered its version handshake.</item>
/// </list>
/// Both ends are the same executable, yet each message is checked in full (magic, kind, exact
/// length, a known protocol version) so a confused peer is refused rather than misread.
/// </summary>
public static class HandOffMessage
{
    private const uint Magic = 0x5031_3148; // "P11H"
    private const byte ReadyKind = 1;
    private const byte ClientKind = 2;

    public const int ReadyLength = 4 + 1 + 4;
    public const int ClientLength = 4 + 1 + 8 + 4 + 4 + 4 + 1;

    /// <summary>Large enough for any message (receive buffers).</summary>
    public const int MaxLength = 64;

    public static int Encode(WorkerReady ready, Span<byte> buffer)
    {
        BinaryPrimitives.WriteUInt32BigEndian(buffer, Magic);
        buffer[4] = ReadyKind;
        BinaryPrimitives.WriteUInt32BigEndian(buffer[5..], ready.StartMicroseconds);
        return ReadyLength;
    }

    public static int Encode(ClientHandOff client, Span<byte> buffer)
    {
        BinaryPrimitives.WriteUInt32BigEndian(buffer, Magic);
        buffer[4] = ClientKind;
        BinaryPrimitives.WriteUInt64BigEndian(buffer[5..], client.Serial);
        BinaryPrimitives.WriteUInt32BigEndian(buffer[13..], client.Uid);
        BinaryPrimitives.WriteUInt32BigEndian(buffer[17..], client.Gid);
        BinaryPrimitives.WriteInt32BigEndian(buffer[21..], client.Pid);
        buffer[25] = client.Version;
        return ClientLength;
    }

    public static bool TryDecode(ReadOnlySpan<byte> message, out WorkerReady ready)
    {
        ready = default;
        if (message.Length != ReadyLength || BinaryPrimitives.ReadUInt32BigEndian(message) != Magic || message[4] != ReadyKind)
            return false;
        ready = new WorkerReady(BinaryPrimitives.ReadUInt32BigEndian(message[5..]));
        return true;
    }

    public static bool TryDecode(ReadOnlySpan<byte> message, out ClientHandOff client)
    {
        client = default;
        if (message.Length != ClientLength || BinaryPrimitives.ReadUInt32BigEndian(message) != Magic || message[4] != ClientKind)
            return false;
        byte version = message[25];
        if (version > WireProfile.MaxVersion)
            return false;
        client = new ClientHandOff(
            Serial: BinaryPrimitives.ReadUInt64BigEndian(message[5..]),
            Uid: BinaryPrimitives.ReadUInt32BigEndian(message[13..]),
            Gid: BinaryPrimitives.ReadUInt32BigEndian(message[17..]),
            Pid: BinaryPrimitives.ReadInt32BigEndian(message[21..]),
            Version: version);
        return true;
    }
}

/// <summary>A worker has loaded the module (and initialised it, if it was asked to), which took <paramref name="StartMicroseconds"/>.</summary>
public readonly record struct WorkerReady(uint StartMicroseconds);

/// <summary>
/// A client handed to a worker: the listener's number for the connection, the peer's
/// credentials (SO_PEERCRED at accept) and the protocol version the handshake settled on.
/// </summary>
public readonly record struct ClientHandOff(ulong Serial, uint Uid, uint Gid, int Pid, byte Version);
