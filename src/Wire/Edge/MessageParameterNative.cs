using System.Runtime.InteropServices;
using P11Proxy.Pkcs11;
using P11Proxy.Wire;

namespace P11Proxy.Wire.Edge;

/// <summary>
/// Builds the module's per-message parameter structure from the typed wire form, in one block of
/// broker memory: the structure, then the IV or nonce, then the tag or MAC, every pointer into
/// that block and every length the length of what is there. After the call, <see cref="Changes"/>
/// reads back what the module wrote.
/// </summary>
public static unsafe class MessageParameterNative
{
    /// <summary>Offsets of the buffers in a block (the structure comes first, 16-byte aligned).</summary>
    private static (int Size, int Iv, int Tag, int Total) Layout(in WireMessageParameter p)
    {
        int size = p.Form switch
        {
            MessageParameterForm.Gcm => sizeof(CK_GCM_MESSAGE_PARAMS),
            MessageParameterForm.Ccm => sizeof(CK_CCM_MESSAGE_PARAMS),
            MessageParameterForm.SalsaChaChaPoly => sizeof(CK_SALSA20_CHACHA20_POLY1305_MSG_PARAMS),
            _ => 0,
        };
        int iv = (size + 15) & ~15;
        int tag = iv + p.Iv.Length;
        return (size, iv, tag, tag + p.Tag.Length);
    }

    /// <summary>Bytes <see cref="Build"/> needs for <paramref name="p"/> (0 for an absent parameter).</summary>
    public static nuint BlockSize(in WireMessageParameter p) => p.Form == MessageParameterForm.Absent ? 0 : (nuint)Layout(p).Total;

    /// <summary>Fills <paramref name="block"/> (zeroed, <see cref="BlockSize"/> bytes) and returns the structure's size.</summary>
    public static nuint Build(in WireMessageParameter p, byte* block)
    {
        var (size, ivOffset, tagOffset, _) = Layout(p);
        byte* iv = p.Iv.IsNull ? null : block + ivOffset;
        byte* tag = p.Tag.IsNull ? null : block + tagOffset;
        if (iv != null) p.Iv.Data.Span.CopyTo(new Span<byte>(iv, p.Iv.Length));
        if (tag != null) p.Tag.Data.Span.CopyTo(new Span<byte>(tag, p.Tag.Length));
        switch (p.Form)
        {
            case MessageParameterForm.Gcm:
                *(CK_GCM_MESSAGE_PARAMS*)block = new CK_GCM_MESSAGE_PARAMS
                {
                    pIv = iv, ulIvLen = (nuint)p.Iv.Length, ulIvFixedBits = (nuint)p.IvFixedBits,
                    ivGenerator = (nuint)p.IvGenerator, pTag = tag, ulTagBits = (nuint)p.TagBits,
                };
                break;
            case MessageParameterForm.Ccm:
                *(CK_CCM_MESSAGE_PARAMS*)block = new CK_CCM_MESSAGE_PARAMS
                {
                    ulDataLen = (nuint)p.DataLength, pNonce = iv, ulNonceLen = (nuint)p.Iv.Length,
                    ulNonceFixedBits = (nuint)p.IvFixedBits, nonceGenerator = (nuint)p.IvGenerator,
                    pMAC = tag, ulMACLen = (nuint)p.Tag.Length,
                };
                break;
            case MessageParameterForm.SalsaChaChaPoly:
                *(CK_SALSA20_CHACHA20_POLY1305_MSG_PARAMS*)block = new CK_SALSA20_CHACHA20_POLY1305_MSG_PARAMS
                {
                    pNonce = iv, ulNonceLen = (nuint)p.Iv.Length, pTag = tag,
                };
                break;
        }
        return (nuint)size;
    }

    /// <summary>
    /// What the module changed in the buffers of <paramref name="block"/> (built from
    /// <paramref name="sent"/>): the fields whose bytes differ. A field written with the bytes it
    /// held already needs no copying back: the caller's memory holds them too.
    /// </summary>
    public static MessageParameterUpdate Changes(in WireMessageParameter sent, byte* block)
    {
        if (sent.Form == MessageParameterForm.Absent) return MessageParameterUpdate.None;
        var (_, ivOffset, tagOffset, _) = Layout(sent);
        return new MessageParameterUpdate(Changed(sent.Iv, block + ivOffset), Changed(sent.Tag, block + tagOffset));
    }

    private static WireBytes Changed(in WireBytes sent, byte* now)
    {
        if (sent.IsNull || sent.Length == 0) return WireBytes.Null;
        var current = new ReadOnlySpan<byte>(now, sent.Length);
        return current.SequenceEqual(sent.Data.Span) ? WireBytes.Null : WireBytes.Of(current.ToArray());
    }

    /// <summary>A block that outlives the call (a message begun), zeroed; freed with <see cref="Free"/>.</summary>
    public static byte* AllocateLasting(nuint size)
    {
        var block = (byte*)NativeMemory.AllocZeroed(size + (nuint)sizeof(nuint));
        *(nuint*)block = size;
        return block + sizeof(nuint);
    }

    /// <summary>Wipes (a tag, an IV) and frees a block from <see cref="AllocateLasting"/>.</summary>
    public static void Free(void* parameter)
    {
        var block = (byte*)parameter - sizeof(nuint);
        NativeMemory.Clear(block, *(nuint*)block + (nuint)sizeof(nuint));
        NativeMemory.Free(block);
    }
}
