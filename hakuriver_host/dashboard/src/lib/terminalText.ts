// A program's output as a terminal shows it, from the chunks of its stream: its escape
// sequences (colours, cursor moves, a window title) take no room, and a carriage return
// not followed by a line feed starts its line again, which is how progress bars (tqdm,
// curl, pip) redraw themselves in place. Without this, a progress bar's thousands of states
// piled up on one line, and colours showed as "␛[31m".
//
// A carriage return only marks the line: what comes after it replaces the line ("\r\n" and a
// "\r" last in the output leave it). A shorter text does not keep the end of a longer one,
// as a terminal would; progress bars write whole lines.

/** Some text to append, after clearing the current line (after the last line end) when
 * ``restart``. */
export interface Piece {
  restart: boolean;
  text: string;
}

// CSI (colours, cursor and erase commands), OSC (window title, links: up to BEL or ST) and
// the short ones: a final character after any intermediates ("\x1b(B" of tput sgr0, "\x1b7").
const ESCAPE = /\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[ -/]*[0-~])/g;
// The start of one cut off at the end of a chunk: held back for the next.
const UNFINISHED = /\x1b(?:\[[0-?]*[ -/]*|\][^\x07\x1b]*\x1b?|[ -/]*)$/;
// An unfinished "escape" longer than this is not one: let it through.
const LONGEST_ESCAPE = 512;

export class TerminalText {
  private held = "";
  private returned = false;

  /** The pieces of ``chunk`` (already decoded), in order; ``end`` when it is the last. */
  feed(chunk: string, end = false): Piece[] {
    let text = this.held + chunk;
    this.held = "";
    const unfinished = end ? null : UNFINISHED.exec(text);
    if (unfinished && text.length - unfinished.index <= LONGEST_ESCAPE) {
      this.held = text.slice(unfinished.index);
      text = text.slice(0, unfinished.index);
    }
    const pieces: Piece[] = [];
    let returned = this.returned;
    text
      .replace(ESCAPE, "")
      .split("\r")
      .forEach((part, i) => {
        if (i > 0) returned = true;
        if (!part) return; // nothing yet after the carriage return
        pieces.push({ restart: returned && !part.startsWith("\n"), text: part });
        returned = false;
      });
    this.returned = returned;
    return pieces;
  }
}
