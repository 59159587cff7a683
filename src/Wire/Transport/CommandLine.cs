using System.Text;

namespace P11Proxy.Wire.Transport;

/// <summary>
/// Splits a "|command args" address into arguments the way p11-kit does (its p11_argv_parse), so an
/// address written for p11-kit-client.so starts the same program with the same arguments here; no
/// shell is involved (no variables, globbing or redirection), and the program is found on PATH.
/// </summary>
public static class CommandLine
{
    /// <summary>
    /// Whitespace separates arguments; single or double quotes group, and inside them a backslash
    /// escapes the quote character (before any other character it stays as written). Outside quotes
    /// a backslash keeps itself and the character after it, which then never separates, as in p11-kit.
    /// Unlike p11-kit, runs of whitespace give no empty arguments and an unclosed quote is an error.
    /// </summary>
    public static bool TrySplit(string line, out string[] arguments, out string error)
    {
        var result = new List<string>();
        var current = new StringBuilder();
        bool started = false; // quotes make an argument even when they hold nothing
        char quote = '\0';
        arguments = [];
        error = "";
        for (int i = 0; i < line.Length; i++)
        {
            char c = line[i];
            if (quote != '\0')
            {
                if (c == quote)
                {
                    quote = '\0';
                    continue;
                }
                if (c == '\\')
                {
                    if (++i == line.Length)
                    {
                        error = "it ends with a backslash";
                        return false;
                    }
                    if (line[i] != quote) current.Append('\\');
                    c = line[i];
                }
                current.Append(c);
            }
            else if (IsSpace(c))
            {
                if (started || current.Length > 0)
                    result.Add(current.ToString());
                current.Clear();
                started = false;
            }
            else if (c is '\'' or '"')
            {
                quote = c;
                started = true;
            }
            else if (c == '\\')
            {
                if (++i == line.Length)
                {
                    error = "it ends with a backslash";
                    return false;
                }
                current.Append('\\').Append(line[i]);
            }
            else
            {
                current.Append(c);
            }
        }
        if (quote != '\0')
        {
            error = $"a {quote} quote is not closed";
            return false;
        }
        if (started || current.Length > 0)
            result.Add(current.ToString());
        if (result.Count == 0)
        {
            error = "it names no program";
            return false;
        }
        arguments = result.ToArray();
        return true;
    }

    /// <summary>C's isspace in the C locale.</summary>
    private static bool IsSpace(char c) => c is ' ' or '\t' or '\n' or '\v' or '\f' or '\r';
}
