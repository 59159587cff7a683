namespace P11Proxy.Wire;

/// <summary>
/// A shape many calls share: the same request and reply signatures, the same meaning of each
/// part. The module (Remote.&lt;Name&gt;) and the broker (Dispatcher.&lt;Name&gt;) each have one
/// method per shape, named as here, built from the edge parts of src/Wire/Edge (CallerArguments on
/// the module's side, BackendArguments on the broker's). A call whose signature is its own has
/// <see cref="CallShapes.Own"/>: its row gives the signatures, and each side has a method named after the call.
/// </summary>
public sealed class CallShape(string name, string request, string response, string meaning)
{
    public string Name { get; } = name;
    public string Request { get; } = request;
    public string Response { get; } = response;

    /// <summary>What the parts are, for readers of the table.</summary>
    public string Meaning { get; } = meaning;

    public override string ToString() => Name;
}

/// <summary>The vocabulary of shapes (see <see cref="CallShape"/>); rows name one.</summary>
public static class CallShapes
{
    public static readonly CallShape Session = new("Session", "u", "", "a session (or slot) id; nothing back");
    public static readonly CallShape SessionHandle = new("SessionHandle", "uu", "", "a session and an object handle (or flags); nothing back");
    public static readonly CallShape Data = new("Data", "uay", "", "a session and one input buffer; nothing back");
    public static readonly CallShape DataData = new("DataData", "uayay", "", "a session and two input buffers; nothing back");
    public static readonly CallShape ToData = new("ToData", "ufy", "ay", "a session and an output buffer's capacity; the output (or its size)");
    public static readonly CallShape DataToData = new("DataToData", "uayfy", "ay", "a session, an input and an output capacity; the output (or its size)");
    public static readonly CallShape Init = new("Init", "uMu", "", "a session, a mechanism and a key; nothing back");

    /// <summary>A call with a signature of its own (the row gives it).</summary>
    public static readonly CallShape Own = new("Own", "", "", "the call's own signature");

    public static IReadOnlyList<CallShape> All { get; } = [Session, SessionHandle, Data, DataData, ToData, DataToData, Init, Own];
}
