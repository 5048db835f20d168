// What the chat pages share: appending a line to a list of messages.

// line appends to list an item of spans, one per [class, text] pair, and
// scrolls to it. Text, never HTML: messages come from anyone.
export function line(list, className, parts) {
  const li = document.createElement('li');
  li.className = className;
  for (const [cls, text] of parts) {
    const span = document.createElement('span');
    span.className = cls;
    span.textContent = text;
    li.append(span);
  }
  list.append(li);
  list.scrollTop = list.scrollHeight;
}
