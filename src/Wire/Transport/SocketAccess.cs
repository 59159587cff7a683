namespace P11Proxy.Wire.Transport;

/// <summary>
/// Who the file system lets reach the broker's socket: its mode and group, and the mode of the
/// directories the broker creates for it. The kernel checks these at connect(); the broker then
/// admits a peer by its credentials (SO_PEERCRED) against the allow lists. The modes only open
/// the door for the users the allow lists name, so that an admitted user is not stopped by
/// EACCES first:
/// <list type="bullet">
/// <item>no allow list: socket 0600, directories 0700 (the broker's user only);</item>
/// <item>one allowed group (or <c>--socket-group</c>): the socket belongs to that group, 0660, and
/// directories the broker creates are 0710 in that group;</item>
/// <item>an allowed uid, or several groups: socket 0666, directories 0711 (searchable, not
/// listable): anyone may connect, only the admitted are served;</item>
/// <item><c>--socket-mode</c> overrides the socket's mode; the directories follow it.</item>
/// </list>
/// </summary>
public sealed record SocketAccess(uint SocketMode, uint? Group, uint DirectoryMode, string Description)
{
    public static SocketAccess For(uint ownUid, IEnumerable<uint> allowedUids, IEnumerable<uint> allowedGids,
                                   uint? socketMode = null, uint? socketGroup = null)
    {
        var foreignUids = allowedUids.Where(uid => uid != ownUid).Distinct().Order().ToArray();
        var gids = allowedGids.Distinct().Order().ToArray();
        uint? group = socketGroup ?? (foreignUids.Length == 0 && gids.Length == 1 ? gids[0] : null);
        bool othersNeeded = foreignUids.Length > 0 || gids.Any(gid => gid != group);
        uint mode = socketMode ?? (othersNeeded ? 0b110_110_110u : group is not null ? 0b110_110_000u : 0b110_000_000u);
        uint directory = 0b111_000_000u | ((mode & 0b000_110_000u) != 0 ? 0b000_001_000u : 0) | ((mode & 0b000_000_110u) != 0 ? 0b000_000_001u : 0);

        var admitted = new List<string>();
        if (foreignUids.Length > 0) admitted.Add($"uid {string.Join(", ", foreignUids)}");
        if (gids.Length > 0) admitted.Add($"gid {string.Join(", ", gids)}");
        string description = $"socket mode {Octal(mode)}{(group is { } g ? $", group {g}" : "")}, directories it creates {Octal(directory)}" +
            (admitted.Count > 0 ? $"; besides uid {ownUid}, peers with {string.Join(" or ", admitted)} are admitted by their credentials" : "");
        return new SocketAccess(mode, group, directory, description);
    }

    /// <summary>Parses an octal mode such as 0660 (permission bits only).</summary>
    public static bool TryParseMode(string text, out uint mode)
    {
        mode = 0;
        if (text.Length is 0 or > 4) return false;
        foreach (char c in text)
        {
            if (c is < '0' or > '7') return false;
            mode = mode * 8 + (uint)(c - '0');
        }
        return mode <= 0b111_111_111;
    }

    public static string Octal(uint mode) => "0" + Convert.ToString((long)(mode & 0b111_111_111_111), 8).PadLeft(3, '0');
}
