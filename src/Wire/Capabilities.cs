using System.Text;

namespace P11Proxy.Wire;

/// <summary>
/// p11proxy's extensions to p11-kit's protocol, negotiated so that a p11-kit peer sees exactly the
/// bytes it sees today. The channel is the options field of the C_Initialize frames, which
/// p11-kit's transport has always carried and never interpreted (rpc-transport.c):
///   - p11-kit's client fills it in every request with its module's name ("client" for
///     p11-kit-client.so, the .module file's name for a `remote:` module; never empty);
///   - p11-kit's server reads it, ignores it, and answers every request with it empty
///     (rpc-server.c, p11-kit 0.23 to 0.26.4).
/// Our module sends it empty, as it always has. Our broker answers a C_Initialize whose options
/// were empty with <see cref="Announcement"/> in the reply's options; to a request with options
/// (p11-kit's client) it answers as before. The module uses a capability only when the announcement
/// names it. Nothing depends on the protocol version byte, which stays p11-kit's: a future p11-kit
/// version cannot be mistaken for a capability, nor a capability for a version.
/// </summary>
public static class Capabilities
{
    /// <summary>The prefix that makes the options field ours: no p11-kit release writes options in a reply.</summary>
    private const string Prefix = "p11proxy-capabilities:";

    /// <summary>
    /// Typed per-message parameters for the message-based calls (<see cref="MessageParameterCodec"/>),
    /// version 1 of their encoding. A later, incompatible encoding gets a new name.
    /// </summary>
    public const string TypedMessageParameters = "typed-message-parameters/1";

    /// <summary>What our broker puts in the options of its C_Initialize reply.</summary>
    public static ReadOnlySpan<byte> Announcement => "p11proxy-capabilities: typed-message-parameters/1"u8;

    /// <summary>Whether the options of a C_Initialize reply announce <paramref name="capability"/>.</summary>
    public static bool Announces(ReadOnlySpan<byte> replyOptions, string capability)
    {
        // At most the frame limit's 4096 bytes of options; anything that is not ours is ignored.
        if (replyOptions.Length > 4096) return false;
        string text;
        try
        {
            text = new UTF8Encoding(false, true).GetString(replyOptions);
        }
        catch (DecoderFallbackException)
        {
            return false;
        }
        if (!text.StartsWith(Prefix, StringComparison.Ordinal)) return false;
        foreach (var token in text[Prefix.Length..].Split(' ', StringSplitOptions.RemoveEmptyEntries))
            if (token == capability) return true;
        return false;
    }

    /// <summary>Whether a client whose C_Initialize frame carried these options gets the announcement: only ours, which send none.</summary>
    public static bool ClientMayBeOurs(ReadOnlySpan<byte> requestOptions) => requestOptions.IsEmpty;
}
