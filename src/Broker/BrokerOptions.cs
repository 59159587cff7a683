using P11Proxy.Wire.Transport;

namespace P11Proxy.Broker;

/// <summary>
/// The broker's command line after the mode. Every documented option is defined once, in
/// man/reference.json: man/generate.py turns it into BrokerOptions.g.cs (in obj/, at build time)
/// with its lines in the usage text, the property its value goes to and how it is parsed. This
/// half holds what no option owns: the word-by-word reading, the internal worker mode, the order
/// options are applied in, the messages a mistake gets, and the parsers reference.json's "parse"
/// expressions call. See docs/broker-command-line.md.
/// </summary>
internal sealed partial class BrokerOptions
{
    /// <summary>The listener's pid, given to the internal worker mode only (never documented).</summary>
    public int? ListenerPid { get; private set; }

    /// <summary>The first option given that only the listener of 'serve' understands, if any.</summary>
    public string? ListenerOptionGiven { get; private set; }

    /// <summary>
    /// Every option that is not the listener's, as given: the options a worker is started with
    /// (the module and how to serve it), so an option added for the module side reaches the
    /// workers without anything else to change.
    /// </summary>
    public List<string> ModuleOptions { get; } = new();

    private const string ListenerPidOption = "--listener-pid";

    /// <summary>
    /// Parses <paramref name="args"/> (the mode first); null when help was asked for. Throws
    /// <see cref="BrokerException"/> naming what is wrong.
    /// </summary>
    public static BrokerOptions? Parse(string[] args) => args[0] == "worker" ? ParseWorker(args) : ParseUser(args);

    /// <summary>
    /// The user's command line: each option as a word of its own, followed by its value if it
    /// takes one (`--max-clients 8`), or with the value after `=` (`--max-clients=8`); short forms
    /// as documented (`-v`). `--help` or `-h` anywhere asks for the usage.
    /// </summary>
    private static BrokerOptions? ParseUser(string[] args)
    {
        var given = new List<(string Name, string? Value)>();
        for (int i = 1; i < args.Length; i++)
        {
            string word = args[i];
            if (word is "--help" or "-h")
                return null;
            string? inline = null;
            int equals = word.IndexOf('=');
            if (word.StartsWith("--", StringComparison.Ordinal) && equals > 2)
            {
                inline = word[(equals + 1)..];
                word = word[..equals];
            }
            string name = ShortForms.TryGetValue(word, out var longForm) ? longForm : word;
            if (!ValueOptions.Contains(name) && !FlagOptions.Contains(name))
                throw new BrokerException($"unknown option '{args[i]}'\n{Usage}");
            string? value = null;
            if (ValueOptions.Contains(name))
                value = inline ?? (i + 1 < args.Length ? args[++i] : throw new BrokerException($"{word} needs a value\n{Usage}"));
            else if (inline is not null)
                throw new BrokerException($"{word} takes no value, not '{inline}'\n{Usage}");
            given.Add((name, value));
        }

        // Applied in command-line order: later values win, repeated ones add up.
        var options = new BrokerOptions();
        foreach (var (name, value) in given)
            options.Apply(name, value);
        return options;
    }

    /// <summary>
    /// A worker's command line, which only the listener writes: its own ModuleOptions (parsed and
    /// checked when the user gave them) and the listener's pid, the one option no user gives.
    /// </summary>
    private static BrokerOptions ParseWorker(string[] args)
    {
        var options = new BrokerOptions();
        for (int i = 1; i < args.Length; i++)
        {
            string name = args[i];
            if (name != ListenerPidOption && !ValueOptions.Contains(name) && !FlagOptions.Contains(name))
                throw new BrokerException($"unknown option '{name}'");
            string? value = null;
            if (TakesValue(name))
                value = i + 1 < args.Length ? args[++i] : throw new BrokerException($"{name} needs a value");
            options.Apply(name, value);
        }
        return options;
    }

    private void Apply(string name, string? value)
    {
        if (name == ListenerPidOption)
        {
            ListenerPid = Count(value!, name, 1, int.MaxValue);
            return;
        }
        if (value is null) ApplyFlag(name);
        else ApplyValue(name, value);
        if (ListenerOnly.Contains(name))
            ListenerOptionGiven ??= name;
        else
        {
            ModuleOptions.Add(name);
            if (value is not null) ModuleOptions.Add(value);
        }
    }

    private static bool TakesValue(string option) => option == ListenerPidOption || ValueOptions.Contains(option);

    // ---- the parsers man/reference.json's "parse" expressions call ------------------------------------

    /// <summary>1 MiB to 64 GiB: a budget of 0 would refuse every large output, which no one means.</summary>
    private static long Mebibytes(string text, string option, int minimum = 1) =>
        long.TryParse(text, out var mib) && mib >= minimum && mib <= 65536
            ? mib << 20
            : throw new BrokerException($"{option} takes a number of MiB from {minimum} to 65536, not '{text}'");

    private static int Count(string text, string option, int minimum, int maximum) =>
        int.TryParse(text, out var n) && n >= minimum && n <= maximum
            ? n
            : throw new BrokerException($"{option} takes a number from {minimum} to {maximum}, not '{text}'");

    private static uint Id(string text, string option) =>
        uint.TryParse(text, out var id) ? id : throw new BrokerException($"{option} takes a numeric id, not '{text}'");

    private static uint OwnerReadWriteMode(string text, string option) =>
        SocketAccess.TryParseMode(text, out uint mode) && (mode & 0b110_000_000) == 0b110_000_000
            ? mode
            : throw new BrokerException($"{option} takes an octal mode such as 0660 that leaves the owner read and write, not '{text}'");
}
