using System.CommandLine;
using System.CommandLine.Parsing;
using P11Proxy.Wire.Transport;

namespace P11Proxy.Broker;

/// <summary>
/// The broker's command line after the mode, parsed by System.CommandLine. Every documented option
/// is defined once, in man/reference.json: man/generate.py turns it into BrokerOptions.g.cs (in
/// obj/, at build time) with its System.CommandLine definition, its lines in the usage text, the
/// property its value goes to and how it is parsed. This half holds what no option owns: the
/// internal worker mode, the order options are applied in, the messages a mistake gets, and the
/// parsers reference.json's "parse" expressions call. See docs/broker-command-line.md.
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

    private static BrokerOptions? ParseUser(string[] args)
    {
        // Exactly the documented options and --help (which prints Usage): a plain Command, not a
        // RootCommand, has no --version and no [directives], and its help is ours (System.CommandLine's
        // help renderer would only be dead weight in the binary); no @response files either (a value
        // starting with @ stays a value).
        var help = new Option<bool>("--help", "-h") { Arity = ArgumentArity.Zero };
        var command = new Command("p11proxy-broker") { help };
        var byAlias = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var option in Documented())
        {
            command.Options.Add(option);
            byAlias[option.Name] = option.Name;
            foreach (var alias in option.Aliases) byAlias[alias] = option.Name;
        }

        var result = command.Parse(args[1..], new ParserConfiguration { ResponseFileTokenReplacer = null });
        if (result.GetResult(help) is { Implicit: false })
            return null;
        if (result.UnmatchedTokens.Count > 0)
            throw new BrokerException($"unknown option '{result.UnmatchedTokens[0]}'\n{Usage}");

        // The options as given, in command-line order (a value missing is named before anything else).
        var given = new List<(string Name, string? Value)>();
        var tokens = result.Tokens;
        for (int i = 0; i < tokens.Count; i++)
        {
            if (tokens[i].Type != TokenType.Option) continue;
            string name = byAlias[tokens[i].Value];
            string? value = null;
            if (TakesValue(name))
            {
                if (i + 1 >= tokens.Count || tokens[i + 1].Type != TokenType.Argument)
                    throw new BrokerException($"{tokens[i].Value} needs a value\n{Usage}");
                value = tokens[++i].Value;
            }
            given.Add((name, value));
        }
        if (result.Errors.Count > 0)
            throw new BrokerException($"{result.Errors[0].Message}\n{Usage}");

        // Applied in that order: later values win, repeated ones add up.
        var options = new BrokerOptions();
        foreach (var (name, value) in given)
            options.Apply(name, value);
        return options;
    }

    /// <summary>
    /// A worker's command line, which only the listener writes: its own ModuleOptions (parsed and
    /// checked when the user gave them) and the listener's pid. Read with the same generated
    /// appliers but without System.CommandLine, whose parser would cost every worker (one per
    /// client) about 300 KiB of memory of its own with nothing to find.
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
